"""(5a) The MVTec-scale stream on CPU: how time and memory grow over MVTec AD's 15 tasks.

The stream is the synthetic ``mvtec_scale`` layout: MVTec AD's 15 categories with its exact image
counts (3,629 training, 1,725 test images), at ``--image-size``. Two runs, each in its own process
so that its peak RSS is its own:

* PatchCore, replay (``--buffer`` images) with a memory-bank budget (``--bank-budget`` rows);
* PaDiM, naive.

Both read features through a feature cache on disk with a bounded in-memory part
(``--cache-memory-mb``), so memory does not grow with the images seen. Every run writes
``resources.csv`` (the Resources recorder); from it this prints, per run: total wall time, time
per task against the task index (fit seconds per training image, and evaluation seconds, which
cover every task's test set at each step), and peak RSS at the last task against the first.
Goal: peak RSS last / first <= 1.3 for PatchCore replay with a bank budget.

The default size is 128 px, not anomalib's 256: measured on one category at 256 px (1 thread, shared
machine), PatchCore spends ~0.35 s per image in the backbone and ~1 s per training image fitting, and
each of the 15 rows scores 1,725 test images x 1,024 patches against the bank (~5 TFLOP of k-NN per
row): about 1.5 h for PatchCore and 2 to 2.5 h for both runs on two cores. At 128 px (256 patches per
image) everything is about 4x cheaper, under an hour for both.

    python benchmarks/bench_mvtec_scale.py                          # all 15 categories at 128 px
    python benchmarks/bench_mvtec_scale.py --image-size 256         # anomalib's size: hours on a CPU
    python benchmarks/bench_mvtec_scale.py --image-size 32 --categories toothbrush,bottle,transistor
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import emit, setup_logging, work_dir

RUNS = {
    "patchcore_replay": ("patchcore", "replay"),
    "padim_naive": ("padim", "naive"),
}


def _scenario(args: argparse.Namespace, out: Path):
    from cl_iad.scenarios.folder import build_scenario

    categories = args.categories.split(",") if args.categories else None
    return build_scenario("synthetic", out / "data", categories, image_size=args.image_size, layout="mvtec_scale",
                          progress=not args.quiet)


def child(args: argparse.Namespace, out: Path) -> None:
    """One run, in this process; prints its resources rows as one JSON line."""
    setup_logging()
    import torch

    from cl_iad.cache import FeatureCache
    from cl_iad.resources import read_rows
    from cl_iad.runner import run
    from cl_iad.strategies import Strategy, build_model

    torch.set_num_threads(args.threads)
    model_name, regime = RUNS[args.child]
    scenario = _scenario(args, out)
    params = {"backbone": args.backbone} if args.backbone else {}
    if model_name == "patchcore":
        params["max_bank_size"] = args.bank_budget
    model = build_model(model_name, **params)
    cache = FeatureCache(out / f"features-{args.child}-{args.image_size}", max_memory_mb=args.cache_memory_mb)
    strategy = Strategy(model, regime, buffer_size=args.buffer, cache=cache)
    name = f"{args.child}-{args.image_size}px-{len(scenario)}tasks"
    start = time.perf_counter()
    result = run(strategy, scenario, out / "runs", name=name, metrics=args.metrics.split(","), wandb="off",
                 progress=False, overwrite=True, checkpoint=False, save_model=False)
    wall = time.perf_counter() - start
    rows = read_rows(result.run_dir)
    train = {t.name: len(t.train) for t in scenario}
    print("RUN " + json.dumps({"run": args.child, "wall_s": wall, "run_dir": str(result.run_dir),
                               "rows": [rows[i] for i in sorted(rows)], "train_images": train}), flush=True)


def _spawn(run_name: str, argv: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, *argv, "--child", run_name, "--quiet"],
                          capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RUN "):
            return json.loads(line[4:])
    raise RuntimeError(f"run {run_name} failed:\n{proc.stderr[-3000:]}")


def _figures(rec: dict, buffer: int, replay: bool) -> dict:
    rows = rec["rows"]
    mib = 2.0 ** 20
    per_image = []
    for k, r in enumerate(rows):  # images fitted at task k: its own plus the buffer's (replay)
        n = rec["train_images"][r["task_name"]] + (min(buffer, sum(rec["train_images"][x["task_name"]]
                                                                   for x in rows[:k])) if replay else 0)
        per_image.append(r["fit_s"] / n)
    rss = [r["peak_rss_bytes"] / mib for r in rows]
    first, last = rows[0], rows[-1]
    return {
        "tasks": len(rows),
        "wall_s": round(rec["wall_s"], 1),
        "fit_s_total": round(sum(r["fit_s"] for r in rows), 1),
        "eval_s_total": round(sum(r["eval_s"] for r in rows), 1),
        "fit_ms_per_train_image_by_task": [round(1000 * v, 2) for v in per_image],
        "eval_s_by_task": [round(r["eval_s"], 2) for r in rows],
        "fit_per_image_last_over_first": round(per_image[-1] / per_image[0], 3),
        "eval_last_over_first": round(last["eval_s"] / first["eval_s"], 3),
        # row 1 also extracts every test set's features (later rows read them from the cache)
        "eval_last_over_second": round(last["eval_s"] / rows[1]["eval_s"], 3) if len(rows) > 2 else None,
        "peak_rss_mb_by_task": [round(v, 1) for v in rss],
        "peak_rss_mb_first": round(rss[0], 1),
        "peak_rss_mb_last": round(rss[-1], 1),
        "rss_last_over_first": round(rss[-1] / rss[0], 3),
        "model_mb_last": round(last["model_bytes"] / mib, 2),
        "backbone_passes": sum(r["backbone_passes"] for r in rows),
        "run_dir": rec["run_dir"],
    }


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=128, help="128 (default; 256 takes hours on a CPU)")
    parser.add_argument("--categories", help="comma-separated subset of MVTec AD's categories (default: all 15)")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated subset of {', '.join(RUNS)}")
    parser.add_argument("--backbone", help="backbone for both models (default: the models' default, efficientnet_lite0)")
    parser.add_argument("--bank-budget", type=int, default=10000, help="PatchCore memory-bank rows at most")
    parser.add_argument("--buffer", type=int, default=20, help="replay buffer images")
    parser.add_argument("--cache-memory-mb", type=float, default=256, help="in-memory part of the feature cache")
    parser.add_argument("--metrics", default="image_auroc,pixel_auroc,pro")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads per run")
    parser.add_argument("--child", choices=list(RUNS), help=argparse.SUPPRESS)
    parser.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    out = work_dir("mvtec_scale")
    if args.child:
        child(args, out)
        return None
    setup_logging()
    runs = args.runs.split(",")
    unknown = [r for r in runs if r not in RUNS]
    if unknown:
        parser.error(f"unknown runs {unknown}; choose from {list(RUNS)}")
    start = time.perf_counter()
    scenario = _scenario(args, out)  # generated once, outside the measured runs
    generation_s = time.perf_counter() - start
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--quiet"]
    figures: dict = {"image_size": args.image_size, "categories": scenario.names,
                     "train_images": sum(len(t.train) for t in scenario),
                     "test_images": sum(len(t.test) for t in scenario), "generation_s": round(generation_s, 1),
                     "bank_budget": args.bank_budget, "buffer": args.buffer, "cache_memory_mb": args.cache_memory_mb}
    for name in runs:
        rec = _spawn(name, passthrough)
        figures[name] = _figures(rec, args.buffer, replay=RUNS[name][1] == "replay")
        _print_run(name, figures[name])
    figures["goal"] = "patchcore_replay rss_last_over_first <= 1.3"
    return emit("mvtec_scale", figures)


def _print_run(name: str, f: dict) -> None:
    print(f"\n{name}: {f['tasks']} tasks, {f['wall_s']} s (fit {f['fit_s_total']} s, eval {f['eval_s_total']} s)")
    print(f"  {'task':>4} {'fit ms/img':>10} {'eval s':>8} {'peak RSS MB':>12}")
    for k, (fit, ev, rss) in enumerate(zip(f["fit_ms_per_train_image_by_task"], f["eval_s_by_task"],
                                           f["peak_rss_mb_by_task"])):
        print(f"  {k + 1:>4} {fit:>10} {ev:>8} {rss:>12}")
    print(f"  fit per image last/first {f['fit_per_image_last_over_first']}, eval last/first "
          f"{f['eval_last_over_first']} (last/second {f['eval_last_over_second']}; row 1 also extracts every test "
          f"set's features), peak RSS last/first {f['rss_last_over_first']}", flush=True)


if __name__ == "__main__":
    main()
