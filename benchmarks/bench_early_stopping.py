"""Early stopping: ours (held-out training loss) against anomalib's published protocol (test-set metric).

The published settings train CFA (patience 5), CS-Flow (3) and Reverse Distillation (3) with
early stopping. anomalib 0.x, which produced them, validated every epoch on the *test* set
(``val_split_mode: same_as_test``) and stopped when the test set's pixel AUROC had not risen for
`patience` epochs, then tested on that same set. A continual benchmark cannot do that: test images
must not steer training, and in a stream the future tasks' test sets do not exist yet. Ours holds
out ``val_fraction`` (10 %) of each task's training images and stops on the model's training loss
there, keeping the last weights as Lightning does.

This script measures what the difference does to the numbers, per model and seed, on the photo
set (``tissue``, 128 px, as ``bench_fidelity.py``):

* **no stopping**: ours, every epoch (patience 0);
* **ours**: patience P on the held-out training images;
* **anomalib, published protocol**: anomalib's ``Engine`` with P on the test set's pixel AUROC.

All three are scored by the same metric code on the whole test set, which the published protocol
has also used to choose its stopping epoch: its row is optimistic by construction.

    python benchmarks/bench_early_stopping.py --models cfa,reverse_distillation --seeds 3
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch
from bench_fidelity import METRICS, dataset, run_anomalib, run_ours, setting
from common import REPO, setup_logging, work_dir

log = logging.getLogger("bench.early_stopping")
# The published patience (../shared/reference/README.md); epochs are bench_fidelity's CPU settings.
PATIENCE = {"cfa": 5, "csflow": 3, "reverse_distillation": 3}
EPOCHS = {"cfa": 30, "csflow": 40, "reverse_distillation": 30}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(PATIENCE))
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "results" / "early_stopping")
    args = parser.parse_args(argv)
    setup_logging()
    logging.getLogger("bench").setLevel(logging.INFO)
    torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in PATIENCE]
    if unknown:
        raise SystemExit(f"unknown models {unknown}; choose from {', '.join(PATIENCE)}")
    root = dataset("photo", "tissue", 128, work_dir("fidelity_data"))
    runs = work_dir("early_stopping_runs")
    rows = []
    for name in names:
        base = {**setting(name, 1.0, None), "epochs": EPOCHS[name]}
        patience = PATIENCE[name]
        for seed in range(args.seeds):
            start = time.perf_counter()
            cases = {
                "no stopping": run_ours(name, {**base, "patience": 0, "seed": seed}, root, "tissue", 128, runs / name),
                "ours: held-out training loss": run_ours(name, {**base, "patience": patience, "seed": seed}, root,
                                                         "tissue", 128, runs / name),
                "anomalib: test-set pixel AUROC": run_anomalib(name, {**base, "patience": 0, "seed": seed}, root,
                                                               "tissue", 128, runs / name, stop_on_test=patience),
            }
            for case, result in cases.items():
                rows.append({"model": name, "patience": patience, "max_epochs": EPOCHS[name], "seed": seed,
                             "stopping": case, "epochs_run": result.get("epochs_run"),
                             **{m: result[m] for m in METRICS}})
            log.info("%s seed %d: %.1f min", name, seed, (time.perf_counter() - start) / 60)
    text = write(rows, args.out)
    print(text, flush=True)
    return rows


def write(rows: list[dict], out: Path) -> str:
    """Per model and stopping rule: epochs run and each metric, mean (min-max) over seeds."""
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows)
    frame.to_csv(out / "early_stopping.csv", index=False)
    head = ["model", "patience", "stopping", "seeds", "epochs run"] + list(METRICS)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (model, case), group in frame.groupby(["model", "stopping"], sort=False):
        cells = [model, str(group["patience"].iloc[0]), case, str(len(group)),
                 ", ".join(str(int(e)) for e in group["epochs_run"])]
        for m in METRICS:
            v = group[m].to_numpy(dtype=float)
            cells.append(f"{np.mean(v):.3f} ({v.min():.3f}-{v.max():.3f})" if len(v) > 1 else f"{v[0]:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    (out / "early_stopping.md").write_text(text, encoding="utf-8")
    return text


if __name__ == "__main__":
    main()
