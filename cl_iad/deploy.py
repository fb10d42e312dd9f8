"""Save a trained strategy, load it back, and predict on new images.

A saved model directory holds:

* ``strategy.json``: how to rebuild the model and strategy (``spec``: the run's
  :class:`~cl_iad.config.Config`, whose model and strategy sections are what loading builds;
  ``model`` and ``strategy``: the constructor arguments, which older versions read), the task
  names, and the per-task decision thresholds of the last training step (plus one fitted on all
  tasks pooled);
* ``state.pt``: :meth:`Strategy.state_dict` (model state, replay buffer, per-task states,
  router) as tensors and plain data; it is only ever read with ``torch.load(weights_only=True)``,
  so loading a model someone shared cannot run code.

Loading rebuilds the backbone from the same weights resolver, so a model trained with
``--weights FILE`` needs that file at the same path when it is loaded.
"""

from __future__ import annotations

import csv
import glob
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError
from .results import atomic_write_text
from .scenarios.base import ImageSet, Sample
from .scenarios.datasets import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

FORMAT = 1


def save_strategy(strategy, directory: Path | str, task_names: list[str], thresholds: dict | None = None,
                  image_size: int = 256, config=None) -> Path:
    """Write `strategy` to `directory` (created); returns the directory.

    `thresholds` maps task names (and "*" for all tasks pooled) to {"image": {...}, "pixel": {...}}.
    `config` (a :class:`~cl_iad.config.Config` or its dict) defaults to the one the strategy was
    built from (:meth:`Config.build_strategy`), else one made from its constructor arguments.
    """
    from .checkpoint import atomic_torch_save
    from .config import Config

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    build = getattr(strategy.model, "build_args_", None)
    if build is None:
        raise ValueError(f"model {strategy.model.name!r} was not built with build_model(); cannot record how to rebuild it")
    if config is None:
        config = Config.of_strategy(strategy)
    spec = config.to_dict() if isinstance(config, Config) else Config.from_dict(config).to_dict()
    meta = {"format": FORMAT, "spec": spec, "model": build, "strategy": strategy.build_args(),
            "task_names": list(task_names), "image_size": int(image_size), "thresholds": thresholds or {},
            "config": strategy.config()}
    atomic_torch_save(strategy.state_dict(), directory / "state.pt")
    atomic_write_text(directory / "strategy.json", json.dumps(meta, indent=2, default=str))
    return directory


@dataclass
class LoadedModel:
    """A strategy restored from disk with its task names and thresholds."""

    strategy: object
    task_names: list[str]
    thresholds: dict
    image_size: int

    def task_id(self, name: str) -> int:
        if name not in self.task_names:
            raise ValueError(f"unknown task {name!r}; this model was trained on {self.task_names}")
        return self.task_names.index(name)


def load_strategy(directory: Path | str) -> LoadedModel:
    """Rebuild the strategy saved in `directory` and load its state."""
    from .checkpoint import safe_torch_load

    directory = Path(directory)
    meta = _read_meta(directory)
    strategy = saved_config(directory, meta).build_strategy()
    state = safe_torch_load(directory / "state.pt", "saved model state",
                            f"copy the whole model folder again, or re-run the training that wrote {directory}")
    strategy.load_state_dict(state)
    return LoadedModel(strategy, meta["task_names"], meta.get("thresholds", {}), int(meta["image_size"]))


def saved_config(directory: Path | str, meta: dict | None = None):
    """The :class:`~cl_iad.config.Config` that rebuilds the model saved in `directory`.

    Models saved before configs were recorded (no ``spec`` in strategy.json) get one made from
    their constructor arguments.
    """
    from .config import Config, ConfigError

    directory = Path(directory)
    meta = _read_meta(directory) if meta is None else meta
    if "spec" not in meta:
        return Config.from_build_args(meta["model"], meta["strategy"])
    try:
        return Config.from_dict(meta["spec"], source=directory / "strategy.json")
    except ConfigError as exc:
        raise UserError(f"{exc}; re-run the training that wrote {directory}, or remove 'spec' from its "
                        "strategy.json to rebuild from the constructor arguments") from exc


def _read_meta(directory: Path) -> dict:
    """strategy.json of a saved model, checked; a missing or broken one is a :class:`UserError`."""
    meta_path = directory / "strategy.json"
    if not meta_path.is_file():
        raise UserError(f"{directory} is not a saved model: {meta_path} is missing. Pass the 'model' folder "
                        "of a finished run (RUN_DIR/model) or one written by save_strategy()")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{meta_path} cannot be read ({exc}); copy the model folder again or re-run the "
                        "training that wrote it") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise UserError(f"{meta_path} has format {found}, this cl_iad reads format {FORMAT}; save the model "
                        "again with this version (re-run the training)")
    missing = [k for k in ("model", "strategy", "task_names", "image_size") if k not in meta]
    if missing:
        raise UserError(f"{meta_path} lacks {missing}; it was not written by save_strategy(); re-run the training")
    return meta


def _threshold(thresholds: dict, task: str, kind: str) -> float | None:
    """The `kind` ("image" or "pixel") threshold of `task`, else the one fitted on all tasks pooled.

    A task whose test set had no anomalous image has no threshold of its own (no F1 to maximise).
    """
    for key in (task, "*"):
        value = (thresholds.get(key) or {}).get(kind, {}).get("value")
        if value is not None:
            return float(value)
    return None


def collect_inputs(spec: str | Path) -> list[Path]:
    """Image files named by a file, a folder (all images in it) or a glob pattern."""
    p = Path(spec)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    elif p.is_file():
        files = [p]
    else:
        files = sorted(Path(f) for f in glob.glob(str(spec), recursive=True) if Path(f).suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images found for --input {spec}: give an image file, a folder of images or a "
                                "quoted glob such as 'line3/*.png'")
    return files


def predict_images(loaded: LoadedModel, inputs: list[Path], task: str | None, out: Path | str) -> Path:
    """Score `inputs`; write maps, overlays and predictions.csv under `out`; return the CSV path."""
    from .visualize import overlay, panel, save_png

    out = Path(out)
    (out / "maps").mkdir(parents=True, exist_ok=True)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    strategy = loaded.strategy
    data = ImageSet([Sample(p, 0, "input") for p in inputs], loaded.image_size)
    if task is not None:
        task_id = loaded.task_id(task)
    elif strategy.regime == "per_task" and not getattr(strategy, "routes", False):
        raise ValueError("this per_task model was trained task-aware: pass --task NAME (one of "
                         f"{loaded.task_names}), or retrain with --task-agnostic to route images automatically")
    else:
        task_id = None
    pred = strategy.predict(data, task_id=task_id)
    routed = getattr(pred, "routed_task", None)
    rows = []
    for k, path in enumerate(inputs):
        tid = task_id if task_id is not None else (int(routed[k]) if routed is not None else None)
        tname = loaded.task_names[tid] if tid is not None else "*"  # "*": thresholds fitted on all tasks pooled
        img_th = _threshold(loaded.thresholds, tname, "image")
        score = float(pred.pred_score[k])
        decision = "anomalous" if img_th is not None and score >= img_th else ("normal" if img_th is not None else "")
        row = {"image": str(path), "task": tname, "score": score, "threshold": img_th, "decision": decision}
        if pred.anomaly_map is not None:
            amap = pred.anomaly_map[k]
            np.save(out / "maps" / f"{k:04d}_{path.stem}.npy", amap.astype(np.float32))
            pix_th = _threshold(loaded.thresholds, tname, "pixel")
            image = data[k]["image"].permute(1, 2, 0).numpy()
            lo, hi = float(amap.min()), float(max(amap.max(), pix_th or amap.max()))
            caption = (f"{path.name}  task {tname}  score {score:.3g}  threshold "
                       f"{'n/a' if img_th is None else format(img_th, '.3g')}  -> {decision or 'no threshold'}"
                       "   (white outline: predicted anomalous pixels)")
            ov = save_png(panel(image, overlay(image, amap, lo, hi, pix_th), caption),
                          out / "overlays" / f"{k:04d}_{path.stem}.png")
            row.update({"anomaly_map": str(out / "maps" / f"{k:04d}_{path.stem}.npy"), "overlay": str(ov),
                        "anomalous_pixels": int((amap >= pix_th).sum()) if pix_th is not None else None})
        rows.append(row)
    csv_path = out / "predictions.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["image", "task", "score", "threshold", "decision",
                                                "anomalous_pixels", "anomaly_map", "overlay"])
        writer.writeheader()
        writer.writerows(rows)
    return csv_path
