"""Speed and agreement of cl_iad's metrics against anomalib 2.7's AUPRO and scikit-learn.

    python benchmarks/bench_metrics.py                      # 100 and 1,000 maps, pixel AUROC on 15x100 maps
    python benchmarks/bench_metrics.py --sizes 100 --pixel-tasks 2 --out results/bench.json

Maps are 256x256 float32: uniform noise (so many exact float32 ties) plus 0.6 inside 1-3
elliptic defects on half of the images. Each timing is one call on the same inputs.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import time
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from cl_iad import metrics as M

log = logging.getLogger("bench_metrics")


def make_data(n: int, size: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n anomaly maps (float32) and masks (bool): half the images hold 1-3 elliptic defects."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=bool)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        if rng.random() < 0.5:
            for _ in range(rng.integers(1, 4)):
                cy, cx = rng.integers(0, size, 2)
                ry, rx = rng.integers(2, 30, 2)
                masks[i] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    maps = rng.random((n, size, size), dtype=np.float32)
    maps += np.float32(0.6) * masks
    return maps, masks


def timed(fn, *args, **kw) -> tuple[float, float]:
    gc.collect()
    t0 = time.perf_counter()
    value = fn(*args, **kw)
    return float(value), time.perf_counter() - t0


def anomalib_aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3) -> float:
    """anomalib.metrics.AUPRO on the whole set at once (update + compute), on CPU."""
    import torch
    from anomalib.metrics import AUPRO

    metric = AUPRO(fields=("anomaly_map", "gt_mask"), fpr_limit=fpr_limit)
    metric.update(SimpleNamespace(anomaly_map=torch.from_numpy(maps), gt_mask=torch.from_numpy(masks)))
    return float(metric.compute())


def warm_up(run_anomalib: bool) -> None:
    """One small call each, so imports and first-call set-up are not timed."""
    maps, masks = make_data(4, size=32, seed=9)
    M.pro_score(maps, masks)
    M.pixel_auroc(maps, masks)
    if run_anomalib:
        anomalib_aupro(maps, masks)


def bench_pro(n: int, run_anomalib: bool) -> dict:
    maps, masks = make_data(n)
    row: dict = {"maps": n, "pixels": maps.size}
    row["ours"], row["ours_s"] = timed(M.pro_score, maps, masks)
    if run_anomalib:
        row["anomalib"], row["anomalib_s"] = timed(anomalib_aupro, maps, masks)
        row["abs_diff"] = abs(row["ours"] - row["anomalib"])
        row["speedup"] = row["anomalib_s"] / row["ours_s"]
    log.info("PRO %5d maps: ours %.8f in %.2f s%s", n, row["ours"], row["ours_s"],
             "" if not run_anomalib else
             f" | anomalib {row['anomalib']:.8f} in {row['anomalib_s']:.2f} s | "
             f"speed-up x{row['speedup']:.1f} | |diff| {row['abs_diff']:.2e}")
    return row


def bench_pixel_auroc(tasks: int, per_task: int) -> dict:
    maps, masks = make_data(tasks * per_task, seed=1)
    gc.collect()
    tracemalloc.start()
    value, seconds = timed(M.pixel_auroc, maps, masks)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    per_task_s = []
    for t in range(tasks):
        sl = slice(t * per_task, (t + 1) * per_task)
        per_task_s.append(timed(M.pixel_auroc, maps[sl], masks[sl])[1])
    stream = M.PixelAUROC()
    t0 = time.perf_counter()
    for i in range(0, len(maps), 32):
        stream.update(maps[i : i + 32], masks[i : i + 32])
    est = float(stream.compute())  # a float64 tensor, as torchmetrics metrics return
    lo, hi = stream.bounds()
    stream_s = time.perf_counter() - t0
    row = {"pixels": maps.size, "input_mib": (maps.nbytes + masks.nbytes) / 2**20, "value": value,
           "seconds": seconds, "peak_extra_mib": peak / 2**20, "per_task_mean_s": float(np.mean(per_task_s)),
           "stream_value": est, "stream_bounds": [lo, hi], "stream_abs_diff": abs(est - value),
           "stream_state_mib": stream.nbytes / 2**20, "stream_s": stream_s}
    log.info("pixel AUROC on %dx%dx256^2 = %.1f M pixels (%.0f MiB in): %.9f in %.2f s, peak memory beyond the "
             "inputs %.0f MiB (tracemalloc); per task of %d maps %.2f s",
             tasks, per_task, maps.size / 1e6, row["input_mib"], value, seconds, row["peak_extra_mib"], per_task,
             row["per_task_mean_s"])
    log.info("streaming PixelAUROC, batches of 32: %.9f in %.1f s, bounds [%.9f, %.9f], |diff| %.1e, state %.0f MiB",
             est, stream_s, lo, hi, row["stream_abs_diff"], row["stream_state_mib"])
    return row


def bench_stream_pro(n: int) -> dict:
    """Streaming PRO (batches of 32) against the exact function on the same maps."""
    maps, masks = make_data(n)
    exact = M.pro_score(maps, masks)
    stream = M.PRO()
    t0 = time.perf_counter()
    for i in range(0, n, 32):
        stream.update(maps[i : i + 32], masks[i : i + 32])
    est, (lo, hi) = float(stream.compute()), stream.bounds()
    row = {"maps": n, "exact": exact, "stream": est, "bounds": [lo, hi], "abs_diff": abs(est - exact),
           "stream_s": time.perf_counter() - t0, "state_mib": stream.nbytes / 2**20, "exact_state": stream.exact}
    log.info("streaming PRO on %d maps: %.8f (exact %.8f, |diff| %.1e) bounds [%.8f, %.8f] in %.1f s, state %.0f MiB",
             n, est, exact, row["abs_diff"], lo, hi, row["stream_s"], row["state_mib"])
    return row


def check_sklearn(n: int = 100) -> dict:
    from sklearn.metrics import average_precision_score, roc_auc_score

    maps, masks = make_data(n, seed=2)
    y, s = masks.ravel(), maps.ravel()
    out = {"maps": n, "auroc_diff": abs(M.pixel_auroc(maps, masks) - roc_auc_score(y, s)),
           "aupr_diff": abs(M.pixel_aupr(maps, masks) - average_precision_score(y, s))}
    log.info("sklearn on %d maps: |pixel AUROC diff| %.1e, |pixel AUPR diff| %.1e", n, out["auroc_diff"],
             out["aupr_diff"])
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 1000], help="numbers of 256x256 maps for PRO")
    p.add_argument("--anomalib-max", type=int, default=1000, help="skip anomalib above this many maps")
    p.add_argument("--pixel-tasks", type=int, default=15, help="tasks of 100 maps for pixel AUROC (0: skip)")
    p.add_argument("--stream-pro", type=int, default=100, help="maps for streaming PRO (0: skip)")
    p.add_argument("--sklearn", action="store_true", help="also check pixel AUROC/AUPR against sklearn")
    p.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    warm_up(min(args.sizes) <= args.anomalib_max)
    res: dict = {"pro": [bench_pro(n, n <= args.anomalib_max) for n in args.sizes]}
    if args.pixel_tasks:
        res["pixel_auroc"] = bench_pixel_auroc(args.pixel_tasks, 100)
    if args.stream_pro:
        res["stream_pro"] = bench_stream_pro(args.stream_pro)
    if args.sklearn:
        res["sklearn"] = check_sklearn()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
