"""How much the ground-truth masks' resize moves the pixel metrics: ours (PIL) against anomalib's.

We resize a mask with PIL's nearest neighbour, which samples each output pixel's centre; anomalib
resizes it with torchvision's ``Resize`` on a ``Mask`` (legacy nearest), which samples its top-left
corner. A defect's edge can move by one pixel (``tests/test_parity_data.py`` pins that only edge
pixels differ). This script measures what that does to the scores a user reads: on the real-photo
set written at `--native` px and read at `--image-size` px, PatchCore's anomaly maps are scored
once against our masks and once against anomalib's, per category, and the differences printed.

    python benchmarks/bench_mask_resize.py                     # 128 px files read at 64 px
    python benchmarks/bench_mask_resize.py --image-size 96

(The photo set cannot be written above about 150 px: its photographs are small.)
"""

from __future__ import annotations

import argparse
import logging

import numpy as np
import torch
from bench_fidelity import dataset
from common import emit, setup_logging, work_dir

log = logging.getLogger("bench.mask_resize")


def anomalib_masks(samples, size: int) -> np.ndarray:
    """Each sample's mask as anomalib's pre-processor gives it: read at its size, then ``Resize`` (nearest)."""
    from anomalib.data.utils import read_mask
    from torchvision.transforms.v2 import Resize
    from torchvision.tv_tensors import Mask

    resize = Resize((size, size), antialias=True)
    out = np.zeros((len(samples), size, size), dtype=bool)
    for i, s in enumerate(samples):
        if s.mask_path is not None:
            out[i] = resize(Mask(read_mask(s.mask_path, as_tensor=True))).numpy().astype(bool).reshape(size, size)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--native", type=int, default=128, help="size the photo set is written at")
    parser.add_argument("--image-size", type=int, default=64, help="size the models read it at")
    args = parser.parse_args(argv)
    setup_logging()
    torch.set_num_threads(1)

    from cl_iad.models.registry import build_model
    from cl_iad.runner import METRIC_FUNCTIONS
    from cl_iad.scenarios import from_folder

    root = dataset("photo", "tissue", args.native, work_dir("fidelity_data"))  # the fidelity benchmark's photo set
    figures: dict = {"native": args.native, "image_size": args.image_size}
    head = ("| category | mask pixels that differ | pixel_auroc ours | pixel_auroc anomalib's masks | diff | "
            "pro ours | pro anomalib's masks | diff |")
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for task in from_folder(root, image_size=args.image_size, dataset="photo"):
        model = build_model("patchcore", device="cpu", seed=0)
        model.prepare(args.image_size)
        model.fit(task.train)
        pred = model.predict(task.test)
        labels = np.array([s.label for s in task.test.samples])
        ours, theirs = task.test.masks(), anomalib_masks(task.test.samples, args.image_size)
        row = {"differ": float((ours != theirs).sum() / max(1, theirs.sum()))}
        for m in ("pixel_auroc", "pro"):
            row[m] = float(METRIC_FUNCTIONS[m](pred, labels, ours))
            row[m + "_anomalib_masks"] = float(METRIC_FUNCTIONS[m](pred, labels, theirs))
        figures[task.name] = row
        lines.append(f"| {task.name} | {row['differ']:.1%} of the defect area | {row['pixel_auroc']:.4f} | "
                     f"{row['pixel_auroc_anomalib_masks']:.4f} | "
                     f"{row['pixel_auroc'] - row['pixel_auroc_anomalib_masks']:+.4f} | {row['pro']:.4f} | "
                     f"{row['pro_anomalib_masks']:.4f} | {row['pro'] - row['pro_anomalib_masks']:+.4f} |")
    print("\n".join(lines), flush=True)
    return emit("mask_resize", figures)


if __name__ == "__main__":
    main()
