"""Run every benchmark, each in its own process, and print their ratios against the goals.

    python benchmarks/run_all.py            # or: make bench
    python benchmarks/run_all.py --only cache,memory

Figures are ratios measured within one run (the machine may be shared and noisy); the raw
seconds and megabytes are printed too, and everything is written to results/bench/summary.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = {"cache": "bench_cache.py", "engine": "bench_engine.py", "memory": "bench_memory.py", "demo": "bench_demo.py"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help=f"comma-separated subset of {', '.join(BENCHES)}")
    args = parser.parse_args(argv)
    chosen = args.only.split(",") if args.only else list(BENCHES)
    unknown = [c for c in chosen if c not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; choose from {list(BENCHES)}")
    results, failed = [], []
    for name in chosen:
        proc = subprocess.run([sys.executable, str(HERE / BENCHES[name])], capture_output=True, text=True,
                              cwd=HERE, check=False)
        lines = [json.loads(line[6:]) for line in proc.stdout.splitlines() if line.startswith("BENCH ")]
        if proc.returncode != 0 or not lines:
            failed.append(name)
            sys.stderr.write(f"benchmark {name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}\n")
            continue
        results.extend(lines)
        for rec in lines:
            print(f"\n== {rec['name']}")
            for key, value in rec.items():
                if key != "name":
                    print(f"  {key:34s} {value}")
    out = HERE.parent / "results" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(results, indent=2))
    print(f"\nwritten: {out / 'summary.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
