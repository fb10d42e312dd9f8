"""(c) Peak RSS of a 15-task replay run (fixed buffer, bank budget) vs a 1-task run.

Each run is its own subprocess and reports ``ru_maxrss`` at its end. The 15 tasks are the
eight synthetic categories drawn with seed 0 plus seven drawn with seed 1. The feature cache
is on disk with a 64 MB in-memory bound, the replay buffer holds 20 images and the PatchCore
bank at most 1,000 rows. A third child runs the 15 tasks with the default unbounded
in-memory cache, to show what the disk store buys. Goal: 15-task / 1-task <= 1.3.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

from common import emit, setup_logging, work_dir

BUFFER, BANK, CACHE_MB = 20, 1000, 64


def _scenario(out: Path, n_tasks: int):
    from cl_iad.scenarios import Scenario, Task, synthetic

    first = synthetic(out / "data", n_tasks=8)
    second = synthetic(out / "data", n_tasks=7, seed=1)
    tasks = [*first.tasks, *[Task(0, f"{t.name}_s1", t.categories, t.train, t.test) for t in second.tasks]]
    tasks = [Task(i, t.name, t.categories, t.train, t.test) for i, t in enumerate(tasks[:n_tasks])]
    return Scenario(tasks, "synthetic15", out / "data", {"order": "fixed"})


def child(n_tasks: int, cache_mode: str, out: Path) -> None:
    setup_logging()
    from cl_iad.cache import FeatureCache
    from cl_iad.runner import run
    from cl_iad.strategies import Strategy, build_model

    scenario = _scenario(out, n_tasks)
    cache = FeatureCache(out / f"features-{n_tasks}", max_memory_mb=CACHE_MB) if cache_mode == "disk" else FeatureCache()
    strategy = Strategy(build_model("patchcore", max_bank_size=BANK), "replay", buffer_size=BUFFER, cache=cache)
    run(strategy, scenario, out, name=f"replay-{n_tasks}-{cache_mode}", wandb="off", progress=False, overwrite=True)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RSS " + json.dumps({"tasks": n_tasks, "cache": cache_mode, "peak_mb": peak_mb,
                               "bank_rows": int(strategy.model.state_dict()["memory_bank"].shape[0])}), flush=True)


def _spawn(n_tasks: int, cache_mode: str, out: Path) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", str(n_tasks), "--cache", cache_mode],
                          capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RSS "):
            return json.loads(line[4:])
    raise RuntimeError(f"memory child ({n_tasks} tasks, {cache_mode}) failed:\n{proc.stderr[-3000:]}")


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cache", default="disk", choices=["disk", "memory"], help=argparse.SUPPRESS)
    parser.add_argument("--skip-memory-variant", action="store_true", help="skip the unbounded in-memory 15-task run")
    args = parser.parse_args(argv)
    out = work_dir("memory")
    if args.child:
        child(args.child, args.cache, out)
        return None
    setup_logging()
    _scenario(out, 15)  # generate the data outside the measured children
    one = _spawn(1, "disk", out)
    many = _spawn(15, "disk", out)
    figures = {"peak_mb_1_task": round(one["peak_mb"], 1), "peak_mb_15_tasks": round(many["peak_mb"], 1),
               "rss_ratio": round(many["peak_mb"] / one["peak_mb"], 3), "bank_rows_15_tasks": many["bank_rows"],
               "buffer": BUFFER, "bank_budget": BANK, "cache_memory_mb": CACHE_MB}
    if not args.skip_memory_variant:
        mem = _spawn(15, "memory", out)
        figures["peak_mb_15_tasks_memory_cache"] = round(mem["peak_mb"], 1)
        figures["rss_ratio_memory_cache"] = round(mem["peak_mb"] / one["peak_mb"], 3)
    figures["goal"] = "rss_ratio <= 1.3"
    return emit("memory_15_tasks", figures)


if __name__ == "__main__":
    main()
