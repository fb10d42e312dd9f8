"""(5c) Mixed vs full precision of the backbone pass: speed-up and the largest change in any cell.

For each model (PatchCore, PaDiM by default) one T-task synthetic stream runs three times, at
``precision`` 32 (the anchor), ``bf16-mixed`` and ``16-mixed``, on ``--device`` (auto: CUDA when
present). Reported per precision, as ratios against 32 in the same process:

* ``extract_speedup``: time of the backbone passes over every train and test image (the part
  autocast changes), best of ``--repeats``;
* ``run_speedup``: time of the whole run (fit, T x T evaluation, metrics);
* ``max_cell_change``: the largest |cell - cell at 32| over every metric and every cell of the
  T x T matrices, and the metric where it occurs.

On a CPU, bf16 autocast is fast only where the CPU has bf16 matrix units (AMX, AVX512-BF16), and
float16 autocast has few fast kernels; on a GPU both use tensor cores. Absolute times are printed
too, but only the ratios mean anything on a shared machine.

    python benchmarks/bench_precision.py                      # 3 tasks, 128 px, on the default device
    python benchmarks/bench_precision.py --device cuda --image-size 256 --backbone wide_resnet50_2
"""

from __future__ import annotations

import time

import pandas as pd
from common import emit, setup_logging, work_dir

PRECISIONS = ("32", "bf16-mixed", "16-mixed")


def _extract_seconds(model, images, batch_size: int, repeats: int) -> float:
    import torch

    best = float("inf")
    for _ in range(repeats):
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for i in range(0, len(images), batch_size):
            model.extract_features(images[i : i + batch_size])
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def _cells(run_dir) -> pd.Series:
    cells = pd.read_csv(run_dir / "cells.csv")
    return cells.set_index(["metric", "trained_upto", "eval_task"])["value"].sort_index()


def one(model_name: str, precision: str, scenario, images, args, out) -> dict:
    from cl_iad.cache import FeatureCache
    from cl_iad.runner import run
    from cl_iad.strategies import Strategy, build_model

    kwargs = {"device": args.device, "precision": precision}
    if args.backbone:
        kwargs["backbone"] = args.backbone
    model = build_model(model_name, **kwargs)
    extract = _extract_seconds(model, images, model.batch_size, args.repeats)
    strategy = Strategy(model, "naive", cache=FeatureCache())
    start = time.perf_counter()
    name = f"{model_name}-{precision}"
    run(strategy, scenario, out, name=name, wandb="off", progress=False, overwrite=True, checkpoint=False,
        save_model=False)
    return {"extract_s": extract, "run_s": time.perf_counter() - start, "cells": _cells(out / name),
            "device": str(model.device)}


def main(argv: list[str] | None = None) -> list[dict]:
    import argparse

    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="patchcore,padim")
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--backbone", help="default: each model's default (efficientnet_lite0, built-in weights)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the images; the best is kept")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    from cl_iad.scenarios import synthetic

    out = work_dir("precision")
    scenario = synthetic(out / "data", n_tasks=args.tasks, image_size=args.image_size)
    images = torch.stack([s[i]["image"] for t in scenario for s in (t.train, t.test) for i in range(len(s))])
    records = []
    for model_name in args.models.split(","):
        results = {p: one(model_name, p, scenario, images, args, out) for p in PRECISIONS}
        anchor = results["32"]
        for precision in PRECISIONS[1:]:
            r = results[precision]
            diff = (r["cells"] - anchor["cells"]).abs()
            worst = diff.idxmax() if diff.notna().any() else None
            records.append(emit(f"precision_{model_name}_{precision}", {
                "model": model_name, "precision": precision, "device": r["device"], "tasks": args.tasks,
                "image_size": args.image_size, "images": len(images),
                "extract_s_32": round(anchor["extract_s"], 3), "extract_s": round(r["extract_s"], 3),
                "extract_speedup": round(anchor["extract_s"] / r["extract_s"], 2),
                "run_s_32": round(anchor["run_s"], 2), "run_s": round(r["run_s"], 2),
                "run_speedup": round(anchor["run_s"] / r["run_s"], 2),
                "max_cell_change": round(float(diff.max()), 4),
                "max_cell_change_at": None if worst is None else "/".join(map(str, worst)),
                "goal": "report only: speed-up and the largest change in any cell against precision 32",
            }))
    return records


if __name__ == "__main__":
    main()
