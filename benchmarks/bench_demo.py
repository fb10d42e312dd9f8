"""(d) Wall time of `make demo`'s command, on this checkout and on the foundation commit.

`make demo` runs ``cl-iad run --dataset synthetic --n-tasks 5 --model patchcore --strategy
naive,replay`` inside the project's .venv (creating it first); here the same command runs
with the current interpreter, once on this checkout and once on the foundation commit
(``git archive``), alternating, best of two each. The ratio is this / foundation.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import REPO, emit, setup_logging, work_dir

FOUNDATION = "466bfd3"
DEMO = ["run", "--dataset", "synthetic", "--n-tasks", "5", "--model", "patchcore", "--strategy", "naive,replay",
        "--no-progress"]


def _time(tree: Path, out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONWARNINGS": "ignore"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "cl_iad", *DEMO, "--out", str(out)], cwd=tree, env=env,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"demo failed in {tree}:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-foundation", action="store_true", help="time only this checkout")
    args = parser.parse_args(argv)
    setup_logging()
    work = work_dir("demo")
    base = work / "foundation"
    if not args.no_foundation and not (base / "cl_iad").is_dir():
        base.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", FOUNDATION], cwd=REPO, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
    now, then = [], []
    for _ in range(2):
        now.append(_time(REPO, work / "out-now"))
        if not args.no_foundation:
            then.append(_time(base, work / "out-foundation"))
    figures = {"demo_s": round(min(now), 1)}
    if then:
        figures.update({"demo_s_foundation": round(min(then), 1), "demo_ratio": round(min(now) / min(then), 3)})
    figures["goal"] = "report the wall time (no target)"
    return emit("make_demo", figures)


if __name__ == "__main__":
    main()
