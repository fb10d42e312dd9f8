"""Save a trained strategy, load it back, and predict on new images.

A saved model directory holds:

* ``strategy.json``: how to rebuild the model and strategy (``spec``: the run's
  :class:`~cl_iad.config.Config`, whose model and strategy sections are what loading builds;
  ``model`` and ``strategy``: the constructor arguments, which older versions read), the task
  names, and the per-task decision thresholds of the last training step (plus one fitted on all
  tasks pooled);
* ``state.pt``: :meth:`Strategy.state_dict` (model state, replay buffer, per-task states,
  router) as tensors and plain data; it is only ever read with ``torch.load(weights_only=True)``,
  so loading a model someone shared cannot run code;
* or, in a model shared on the Hugging Face Hub (``cl-iad push``, :func:`export_model`), the same
  state with no pickle at all: ``state.safetensors`` holds its tensors and ``state.json`` the
  nested plain data around them (a tensor appears there as ``{"__tensor__": KEY}``).

:func:`load_strategy` reads either layout, from a folder or from ``hf://ORG/NAME[@REVISION]`` (a
model repository fetched once into the Hub's cache, then read from there; with
``HF_HUB_OFFLINE=1`` only the cache is used).

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
STATE_TENSORS = "state.safetensors"
STATE_DATA = "state.json"
STATE_FORMAT = "cl_iad.state/1"  # the safetensors metadata and state.json's "format"


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
    """Rebuild the strategy saved in `directory` and load its state.

    `directory` is a saved model folder (``RUN_DIR/model``, state.pt or safetensors layout) or a
    Hub model ``hf://ORG/NAME[@REVISION]`` (see :func:`model_dir`).
    """
    directory = model_dir(directory)
    meta = _read_meta(directory)
    strategy = saved_config(directory, meta).build_strategy()
    strategy.load_state_dict(read_state(directory))
    return LoadedModel(strategy, meta["task_names"], meta.get("thresholds", {}), int(meta["image_size"]))


def model_dir(value: Path | str) -> Path:
    """The local folder of a saved model: `value` itself, or for ``hf://ORG/NAME[@REVISION]`` its copy
    in the Hub cache (downloaded the first time), whose saved model is at the top or in ``model/``
    (a run pushed by ``cl-iad push``)."""
    from .scenarios.remote import parse_hub_ref, snapshot

    ref = parse_hub_ref(value)
    if ref is None:
        return Path(value)
    folder = snapshot(ref, repo_type="model")
    for candidate in (folder, folder / "model"):
        if (candidate / "strategy.json").is_file():
            return candidate
    raise UserError(f"{ref} holds no saved model: neither strategy.json nor model/strategy.json is in the "
                    "repository; push a finished run with `cl-iad push RUN_DIR --repo-id ORG/NAME`")


def read_state(directory: Path) -> dict:
    """The saved :meth:`Strategy.state_dict` of `directory`: state.safetensors + state.json, else state.pt."""
    from .checkpoint import safe_torch_load

    if (directory / STATE_TENSORS).is_file() or (directory / STATE_DATA).is_file():
        return read_safetensors_state(directory)
    return safe_torch_load(directory / "state.pt", "saved model state",
                           f"copy the whole model folder again, or re-run the training that wrote {directory}")


# --------------------------------------------------------------------------- the pickle-free layout


def export_model(source: Path | str, target: Path | str) -> Path:
    """Copy the saved model in `source` to `target` in the safetensors layout (no pickle); returns `target`.

    strategy.json is copied; state.pt, read with ``weights_only=True``, becomes state.safetensors
    (its tensors) and state.json (the plain data around them).
    """
    source, target = Path(source), Path(target)
    _read_meta(source)
    target.mkdir(parents=True, exist_ok=True)
    (target / "strategy.json").write_bytes((source / "strategy.json").read_bytes())
    write_safetensors_state(read_state(source), target)
    return target


def write_safetensors_state(state: dict, directory: Path | str) -> tuple[Path, Path]:
    """Write a state dict as ``state.safetensors`` (tensors) and ``state.json`` (everything else)."""
    from safetensors.torch import save_file

    from .checkpoint import plain_state

    directory = Path(directory)
    tensors: dict = {}
    skeleton = _encode(plain_state(state, "state"), "", tensors)
    save_file(tensors, str(directory / STATE_TENSORS), metadata={"format": STATE_FORMAT})
    atomic_write_text(directory / STATE_DATA, json.dumps({"format": STATE_FORMAT, "state": skeleton}, indent=1,
                                                          allow_nan=False))
    return directory / STATE_TENSORS, directory / STATE_DATA


def read_safetensors_state(directory: Path | str) -> dict:
    """Inverse of :func:`write_safetensors_state`; a missing, foreign or damaged file is a :class:`UserError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    fix = "download or copy the whole model folder again"
    paths = directory / STATE_TENSORS, directory / STATE_DATA
    for path in paths:
        if not path.is_file():
            raise UserError(f"{path} is missing: a model saved as safetensors needs both {STATE_TENSORS} and "
                            f"{STATE_DATA}; {fix}")
    try:
        data = json.loads(paths[1].read_text(encoding="utf-8"))
        tensors = load_file(str(paths[0]), device="cpu")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, SafetensorError) as exc:
        raise UserError(f"{directory}: the saved state cannot be read ({' '.join(str(exc).split())[:200]}); "
                        f"{fix}") from exc
    found = data.get("format") if isinstance(data, dict) else None
    if found != STATE_FORMAT:
        raise UserError(f"{paths[1]} is not a cl_iad state (format {found!r}, expected {STATE_FORMAT!r}); {fix}")
    return _decode(data["state"], tensors, paths[0])


def _encode(value, key: str, tensors: dict):
    """`value` as JSON data; tensors go to `tensors` under their path in the state (``model/memory_bank``)."""
    import math

    import torch

    if isinstance(value, torch.Tensor):
        name, n = key or "tensor", 1
        while name in tensors:
            n += 1
            name = f"{key}#{n}"
        tensors[name] = value.detach().to("cpu").contiguous().clone()  # safetensors refuses shared storage
        return {"__tensor__": name}
    if isinstance(value, torch.dtype):
        return {"__dtype__": str(value).removeprefix("torch.")}
    if isinstance(value, torch.Size):
        return {"__size__": list(value)}
    if isinstance(value, float) and not math.isfinite(value):
        return {"__float__": repr(value)}  # nan, inf, -inf: JSON has no spelling for them
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, _join(key, i), tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, _join(key, i), tensors) for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode(v, _join(key, k), tensors) for k, v in value.items()}
        # int (or other non-string) keys: a list of pairs keeps their type
        return {"__items__": [[k, _encode(v, _join(key, k), tensors)] for k, v in value.items()]}
    return value


def _join(key: str, part) -> str:
    return f"{key}/{part}" if key else str(part)


def _decode(value, tensors: dict, path: Path):
    import torch

    if isinstance(value, list):
        return [_decode(v, tensors, path) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        (tag, inner), = value.items()
        if tag == "__tensor__":
            if inner not in tensors:
                raise UserError(f"{path} lacks the tensor {inner!r} that {STATE_DATA} names; download or copy the "
                                "whole model folder again")
            return tensors[inner]
        if tag == "__dtype__":
            dtype = getattr(torch, str(inner), None)
            if not isinstance(dtype, torch.dtype):
                raise UserError(f"{path.with_name(STATE_DATA)} names an unknown dtype {inner!r}")
            return dtype
        if tag == "__size__":
            return torch.Size(inner)
        if tag == "__float__":
            return float(inner)
        if tag == "__tuple__":
            return tuple(_decode(v, tensors, path) for v in inner)
        if tag == "__items__":
            return {k: _decode(v, tensors, path) for k, v in inner}
    return {k: _decode(v, tensors, path) for k, v in value.items()}


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
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
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
    with csv_path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["image", "task", "score", "threshold", "decision",
                                                "anomalous_pixels", "anomaly_map", "overlay"])
        writer.writeheader()
        writer.writerows(rows)
    return csv_path
