"""Every model x regime on a tiny 2-task stream; one cells.csv per pair, for before/after diffs.

A refactor that is meant to keep behaviour must leave every number in place:

    python benchmarks/cells_snapshot.py --out /tmp/before      # on the old commit
    python benchmarks/cells_snapshot.py --out /tmp/after       # on the new one
    python benchmarks/cells_snapshot.py --compare /tmp/before /tmp/after

Same stream and settings as the model contract test (light presets, 64 px, buffer 4). DSR gets
a randomly initialised VQ model, saved once under --out, since its real weights are a download.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd


def _vq_weights(out: Path) -> Path:
    import torch
    from anomalib.models.image.dsr.torch_model import DiscreteLatentModel

    path = out / "vq_random.pckl"
    if not path.is_file():
        with torch.random.fork_rng():
            torch.manual_seed(0)
            net = DiscreteLatentModel(num_hiddens=128, num_residual_layers=2, num_residual_hiddens=64,
                                      num_embeddings=4096, embedding_dim=128)
        torch.save(net.state_dict(), path)
    return path


def snapshot(out: Path, only: set[str] | None = None) -> None:
    """Write OUT/<model>-<regime>[-agnostic]/cells.csv for every supported pair."""
    import torch

    from cl_iad.models.registry import MODEL_INFOS, build_model
    from cl_iad.runner import run
    from cl_iad.scenarios import synthetic
    from cl_iad.strategies import Strategy, regimes_for

    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    stream = synthetic(out / "data", categories=["bracket", "grain"], image_size=64, n_train=8, n_test_good=2,
                       n_test_per_defect=1)
    vq = _vq_weights(out)
    for info in MODEL_INFOS:
        if only and info.name not in only:
            continue
        modes = [(r, "aware") for r in regimes_for(info)]
        if not info.trains_by_gradient:
            modes.append(("per_task", "agnostic"))
        for regime, mode in modes:
            name = f"{info.name}-{regime}" + ("-agnostic" if mode == "agnostic" else "")
            extra = {"vq_weights": str(vq)} if info.name == "dsr" else {}
            model = build_model(info.name, "light", **extra)
            try:
                run(Strategy(model, regime, buffer_size=4, eval_mode=mode), stream, out, name=name, wandb="off",
                    progress=False, save_model=False, checkpoint=False)
                print(f"{name}: ok", flush=True)
            except Exception as exc:  # noqa: BLE001 - a pair that fails is recorded, not fatal
                (out / name).mkdir(exist_ok=True)
                (out / name / "error.txt").write_text(f"{type(exc).__name__}: {exc}")
                print(f"{name}: {type(exc).__name__}: {exc}", flush=True)


def compare(before: Path, after: Path, tol: float = 0.0) -> int:
    """Print every pair whose cells differ; returns the number of differing pairs."""
    bad = 0
    for path in sorted(before.glob("*/cells.csv")):
        other = after / path.parent.name / "cells.csv"
        if not other.is_file():
            print(f"{path.parent.name}: missing after")
            bad += 1
            continue
        a, b = (pd.read_csv(p).sort_values(["trained_upto", "eval_task", "metric"]).reset_index(drop=True)
                for p in (path, other))
        key = ["trained_upto", "eval_task", "metric"]
        if not a[key].equals(b[key]):
            print(f"{path.parent.name}: different cells")
            bad += 1
            continue
        diff = max((abs(x - y) for x, y in zip(a.value, b.value, strict=True)
                    if not (math.isnan(x) and math.isnan(y))), default=0.0)
        if diff > tol or any(math.isnan(x) != math.isnan(y) for x, y in zip(a.value, b.value, strict=True)):
            print(f"{path.parent.name}: max |diff| {diff:.3g}")
            bad += 1
    print(f"{bad} pair(s) differ" if bad else "all pairs identical")
    return bad


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path)
    p.add_argument("--models", help="comma-separated subset")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    p.add_argument("--tol", type=float, default=0.0)
    a = p.parse_args()
    if a.compare:
        return 1 if compare(*a.compare, a.tol) else 0
    if a.out is None:
        p.error("--out or --compare is required")
    snapshot(a.out, set(a.models.split(",")) if a.models else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
