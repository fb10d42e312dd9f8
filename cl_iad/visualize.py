"""Anomaly heatmap overlays and the step × task grid that shows forgetting in the images."""

from __future__ import annotations

import json
import logging
import os
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)


def _colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> RGB in [0, 1] with matplotlib's 'jet'."""
    import matplotlib

    return matplotlib.colormaps["jet"](np.clip(values, 0.0, 1.0))[..., :3]


def outline(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a boolean mask (the mask minus its 4-neighbour erosion)."""
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def overlay(image: np.ndarray, anomaly_map: np.ndarray, vmin: float, vmax: float, threshold: float | None = None,
            gt_mask: np.ndarray | None = None, alpha: float = 0.45) -> np.ndarray:
    """The heatmap over the image (uint8 RGB), with the predicted mask outlined in white and the
    ground truth, when given, in green.

    `image` is (H, W, 3) in [0, 1]; the map is scaled to [vmin, vmax] so that several overlays
    of the same task share one colour scale.
    """
    span = max(vmax - vmin, 1e-12)
    heat = _colormap((np.asarray(anomaly_map, dtype=np.float64) - vmin) / span)
    out = (1 - alpha) * np.asarray(image, dtype=np.float64) + alpha * heat
    if gt_mask is not None:
        out[outline(gt_mask)] = (0.0, 1.0, 0.0)
    if threshold is not None:
        out[outline(np.asarray(anomaly_map) >= threshold)] = (1.0, 1.0, 1.0)
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


def panel(image: np.ndarray, overlay_rgb: np.ndarray, caption: str, min_size: int = 256) -> np.ndarray:
    """The input image and its overlay side by side, enlarged to at least `min_size` pixels per
    side, with a caption bar underneath (uint8 RGB)."""
    from PIL import ImageDraw

    h, w = overlay_rgb.shape[:2]
    scale = max(1, int(np.ceil(min_size / min(h, w))))
    size = (w * scale, h * scale)
    left = Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).resize(size, Image.NEAREST)
    right = Image.fromarray(overlay_rgb).resize(size, Image.NEAREST)
    canvas = Image.new("RGB", (2 * size[0] + 8, size[1] + 28), "white")
    canvas.paste(left, (0, 0))
    canvas.paste(right, (size[0] + 8, 0))
    ImageDraw.Draw(canvas).text((4, size[1] + 8), caption, fill=(0, 0, 0))
    return np.asarray(canvas)


def save_png(rgb: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path


def save_examples(run_dir: Path, step: int, task_index: int, task_name: str, paths: list[str],
                  maps: np.ndarray, masks: np.ndarray) -> None:
    """Keep a few anomaly maps of one cell so `cl-iad show` can draw them without the model."""
    d = run_dir / "examples"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"step{step:03d}_task{task_index:03d}.npz"
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp")
    try:  # written whole, then renamed: a run killed mid-write leaves no half file for `cl-iad show`
        with tmp.open("wb") as fh:
            np.savez_compressed(fh, maps=maps.astype(np.float32), masks=masks.astype(bool), paths=np.array(paths),
                                task=task_name)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def example_grid(run_dir: Path | str, out: Path | str | None = None, tile: int = 128) -> Path:
    """A grid with one row per training step and one column per task, each cell an overlay of the
    same example image of that task; colour scales are shared within a column."""
    from .scenarios.frames import open_image

    run_dir = Path(run_dir)
    files = sorted((run_dir / "examples").glob("step*_task*.npz"))
    if not files:
        raise FileNotFoundError(f"{run_dir} has no examples/ folder: run it with cl_iad >= 0.1 (examples are "
                                "saved during the run), or check that RUN_DIR is a single run's folder")
    cells = {}
    for f in files:
        step, task = int(f.stem[4:7]), int(f.stem[-3:])
        try:
            with np.load(f) as z:
                cells[(step, task)] = (z["maps"][0].astype(np.float32), z["masks"][0], str(z["paths"][0]),
                                       str(z["task"]))
        except (OSError, ValueError, KeyError, IndexError, EOFError, zipfile.BadZipFile) as exc:  # damaged, half-written
            log.warning("example file %s is unreadable (%s); its tile is left blank", f, exc)
    if not cells:
        raise FileNotFoundError(f"every example file under {run_dir / 'examples'} is unreadable; run the tasks "
                                "again to rewrite them")
    steps = sorted({s for s, _ in cells})
    tasks = sorted({t for _, t in cells})
    thresholds = _final_thresholds(run_dir)
    canvas = np.full((len(steps) * tile, len(tasks) * tile, 3), 255, dtype=np.uint8)
    names = {}
    for t in tasks:
        column = [cells[(s, t)][0] for s in steps if (s, t) in cells]
        vmin, vmax = float(min(m.min() for m in column)), float(max(m.max() for m in column))
        for r, s in enumerate(steps):
            if (s, t) not in cells:
                continue
            amap, mask, path, name = cells[(s, t)]
            names[t] = name
            with open_image(path) as im:  # an image file or a video frame
                img = np.asarray(im.convert("RGB").resize(amap.shape[::-1]), dtype=np.float64) / 255
            rgb = overlay(img, amap, vmin, vmax, thresholds.get(name), mask)
            canvas[r * tile:(r + 1) * tile, t * tile:(t + 1) * tile] = np.asarray(
                Image.fromarray(rgb).resize((tile, tile), Image.NEAREST))
    return _labelled(canvas, [names.get(t, str(t)) for t in tasks], [f"after {s}" for s in steps], tile,
                     Path(out) if out else run_dir / "plots" / "examples_grid.png")


def _final_thresholds(run_dir: Path) -> dict[str, float]:
    """Each task's pixel threshold as set right after learning it (thresholds.jsonl diagonal):
    the decision a deployed line would keep, so later rows show what forgetting does to it."""
    path = run_dir / "thresholds.jsonl"
    out: dict[str, float] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            if "pixel" in rec and rec["trained_task"] == rec["eval_task"]:
                out[rec["eval_task"]] = rec["pixel"]["value"]
    return out


def _labelled(canvas: np.ndarray, cols: list[str], rows: list[str], tile: int, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, w = canvas.shape[:2]
    fig, ax = plt.subplots(figsize=(w / 80 + 1.2, h / 80 + 0.8), dpi=100)
    ax.imshow(canvas)
    ax.set_xticks([tile * (i + 0.5) for i in range(len(cols))], cols, rotation=30, ha="right")
    ax.set_yticks([tile * (i + 0.5) for i in range(len(rows))], rows)
    ax.set_title("anomaly maps of one test image per task after each step\n"
                 "(white: predicted mask at the threshold set when the task was learned; green: ground truth)",
                 fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
