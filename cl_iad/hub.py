"""Share a finished run on the Hugging Face Hub: ``cl-iad push RUN_DIR --repo-id ORG/NAME``.

The repository mirrors the run folder, so a downloaded copy is a run that ``cl-iad report`` reads
and whose ``model/`` ``cl-iad predict --model-dir hf://ORG/NAME`` loads (:func:`cl_iad.deploy.load_strategy`)::

    README.md            model card: metadata (library_name: cl_iad, tags, model-index with the final
                         scores) and text (forgetting table, accuracy matrix, heatmap, how to use it)
    model/               strategy.json, state.safetensors + state.json (no pickle: see cl_iad.deploy)
    config.yaml          the run's full configuration (cl-iad run --config config.yaml repeats it)
    config.json          settings and package versions
    summary.json         ACC, BWT, FWT, FM per metric
    cells.csv, matrix_<metric>.csv, thresholds.jsonl
    plots/*.png          heatmaps, forgetting curves, the example grid

Checkpoints and example arrays stay behind (they are pickled tensors or arrays, and only resuming
needs them). :func:`export_run` writes that folder without uploading; :func:`push` uploads it with
``HfApi.create_repo`` and ``HfApi.upload_folder``. ``pip install 'cl_iad[hub]'``.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from pathlib import Path

from .errors import UserError

log = logging.getLogger(__name__)

LIBRARY = "cl_iad"
TASK_TYPE = "anomaly-detection"
# run files copied as they are (the model is converted; plots and matrices are globbed)
RUN_FILES = ("config.yaml", "config.json", "summary.json", "cells.csv", "thresholds.jsonl", "thresholds_drift.json")
REQUIRED = ("summary.json", "config.json", "model/strategy.json")
METRIC_LABELS = {"image_auroc": "Image AUROC", "pixel_auroc": "Pixel AUROC", "pro": "PRO",
                 "image_aupr": "Image AUPR", "pixel_aupr": "Pixel AUPR", "routing_accuracy": "Routing accuracy"}


def export_run(run_dir: Path | str, target: Path | str, repo_id: str | None = None) -> Path:
    """Write the folder :func:`push` uploads for `run_dir` into `target` (created); returns `target`.

    Raises :class:`UserError` naming the missing file when `run_dir` is not a finished run.
    """
    from .deploy import export_model

    run_dir, target = Path(run_dir), Path(target)
    missing = [name for name in REQUIRED if not (run_dir / name).is_file()]
    if missing:
        raise UserError(f"{run_dir} is not a finished run: {', '.join(str(run_dir / m) for m in missing)} "
                        "missing; pass the folder `cl-iad run` wrote (RESULTS/RUN_NAME), after the run finished "
                        "with its model saved")
    if not (run_dir / "config.yaml").is_file():
        log.warning("%s has no config.yaml (a run started without a config): the repository will not hold one",
                    run_dir)
    target.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, target / name)
    for path in sorted(run_dir.glob("matrix_*.csv")) + sorted(run_dir.glob("plots/*.png")):
        (target / path.relative_to(run_dir)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target / path.relative_to(run_dir))
    export_model(run_dir / "model", target / "model")
    (target / "README.md").write_text(model_card(run_dir, repo_id), encoding="utf-8")
    return target


def push(run_dir: Path | str, repo_id: str, private: bool = False, revision: str | None = None,
         token: str | None = None, commit_message: str | None = None) -> str:
    """Upload the run in `run_dir` to the model repository `repo_id` (created if needed); returns the commit URL.

    `revision` is a branch, created from the default branch when it does not exist; `private`
    applies when the repository is created.
    """
    from ._extras import require

    hub = require("huggingface_hub", "hub", "cl-iad push")
    _check_repo_id(repo_id)
    api = hub.HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="cl_iad_push_") as tmp:
        folder = export_run(run_dir, Path(tmp) / "upload", repo_id)
        try:
            api.create_repo(repo_id, repo_type="model", private=private or None, exist_ok=True)
            if revision:
                api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
            info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model", revision=revision,
                                     commit_message=commit_message or f"cl-iad push {Path(run_dir).name}")
        except hub.utils.HfHubHTTPError as exc:
            raise UserError(f"cannot push to {repo_id}: {' '.join(str(exc).split())[:240]}; log in with a token "
                            "that can write to it (`hf auth login`, or set HF_TOKEN)") from exc
    return str(getattr(info, "commit_url", info))


def _check_repo_id(repo_id: str) -> None:
    import re

    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id or ""):
        raise UserError(f"--repo-id {repo_id!r} is not ORG/NAME (a user or organisation, a slash, a repository name)")


# --------------------------------------------------------------------------- the model card


def model_card(run_dir: Path | str, repo_id: str | None = None) -> str:
    """The README.md of a pushed run: YAML metadata the Hub reads, then the forgetting table and heatmap."""
    from ._extras import require

    hub = require("huggingface_hub", "hub", "writing a model card")
    run_dir = Path(run_dir)
    settings = json.loads((run_dir / "config.json").read_text(encoding="utf-8")).get("settings", {})
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    metrics = [m for m, s in summary.items() if isinstance(s, dict) and "acc" in s]
    name = (repo_id or run_dir.name).split("/")[-1]
    data = hub.ModelCardData(library_name=LIBRARY, tags=_tags(settings), model_name=name,
                             eval_results=_eval_results(hub, settings, summary, metrics) or None)
    body = _card_text(run_dir, repo_id, name, settings, summary, metrics)
    return f"---\n{data.to_yaml()}\n---\n\n{body}"


def _tags(settings: dict) -> list[str]:
    tags = [LIBRARY, TASK_TYPE, "continual-learning", "anomalib"]
    for key in ("model", "regime"):
        if settings.get(key):
            tags.append(str(settings[key]))
    tags += [d.split(":")[0] for d in str(settings.get("dataset", "")).split("+") if d]
    return list(dict.fromkeys(tags))


def _eval_results(hub, settings: dict, summary: dict, metrics: list[str]) -> list:
    """One result per finite final score: ACC and FM of each metric, over the whole stream."""
    dataset = str(settings.get("dataset") or "custom")
    order = settings.get("order")
    results = []
    for metric in metrics:
        s = summary[metric]
        label = METRIC_LABELS.get(metric, metric)
        for key, what in (("acc", "ACC, mean of the final row"), ("fm", "FM, average forgetting")):
            value = s.get(key)
            if value is None or not math.isfinite(value):
                continue
            results.append(hub.EvalResult(
                task_type=TASK_TYPE, task_name="Continual anomaly detection", dataset_type=dataset,
                dataset_name=" -> ".join(settings.get("tasks") or []) or dataset,
                dataset_config=str(order) if order else None, dataset_split="test",
                metric_type=metric if key == "acc" else f"{metric}_{key}", metric_name=f"{label} ({what})",
                metric_value=round(float(value), 6)))
    return results


def _fmt(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.3f}"


def _card_text(run_dir: Path, repo_id: str | None, name: str, settings: dict, summary: dict,
               metrics: list[str]) -> str:
    tasks = settings.get("tasks") or []
    model, regime, dataset = settings.get("model", "?"), settings.get("regime", "?"), settings.get("dataset", "?")
    ref = f"hf://{repo_id}" if repo_id else "hf://ORG/NAME"
    intro = (f"A **{model}** anomaly detector trained on {len(tasks)} tasks one after another (regime **{regime}**) "
             f"on **{dataset}**, then evaluated on every task after each one, with `cl_iad` (continual-learning "
             "evaluation of anomalib detectors).")
    lines = [f"# {name}", "", intro, "", f"Task order: {' → '.join(f'`{t}`' for t in tasks)}.", ""]
    if any(summary[m].get("task_aware") for m in metrics):
        lines += [("> Inference was **task-aware** (the task id was given at test time): with per-task models "
                   "forgetting is zero by construction."), ""]
    lines += ["## Final scores and forgetting", "",
              "| metric | ACC | BWT | FWT | FM |", "|---|---|---|---|---|"]
    for m in metrics:
        s = summary[m]
        lines.append(f"| {METRIC_LABELS.get(m, m)} | {_fmt(s.get('acc'))} | {_fmt(s.get('bwt'))} | "
                     f"{_fmt(s.get('fwt'))} | {_fmt(s.get('fm'))} |")
    definition = next((summary[m].get("forgetting_definition") for m in metrics), "chaudhry")
    lines += ["", (f"ACC is the mean of the last row of the accuracy matrix; BWT the mean change of each task "
                   f"from just after learning it to the end; FM the average forgetting ({definition}: the best "
                   "earlier score minus the final one, over all tasks but the last)."), ""]
    lines += _forgetting_per_task(summary, metrics, tasks)
    main = "image_auroc" if "image_auroc" in metrics else (metrics[0] if metrics else None)
    if main:
        lines += [f"## Accuracy matrix ({METRIC_LABELS.get(main, main)})", "",
                  "Row *i*: after training tasks 0..*i*; column *j*: the score on task *j*'s test set.", ""]
        if (run_dir / "plots" / f"matrix_{main}.png").is_file():
            lines += [f"![{main} matrix](plots/matrix_{main}.png)", ""]
        lines += _matrix_table(run_dir / f"matrix_{main}.csv") + [""]
    lines += ["## Use it", "", "```bash", "pip install 'cl_iad[hub]'",
              f"cl-iad predict --model-dir {ref} --input images/ --out predictions/", "```", "", "```python",
              "from cl_iad.deploy import load_strategy", "", f'loaded = load_strategy("{ref}")',
              "print(loaded.task_names, loaded.thresholds.keys())", "```", "",
              ("The model is `model/state.safetensors` with `model/state.json` (plain data, no pickle) and "
               "`model/strategy.json`; `config.yaml` repeats the run (`cl-iad run --config config.yaml`)."), ""]
    return "\n".join(lines)


def _forgetting_per_task(summary: dict, metrics: list[str], tasks: list[str]) -> list[str]:
    shown = [m for m in metrics if summary[m].get("fm_per_task")]
    if not shown:
        return []
    rows = list(summary[shown[0]]["fm_per_task"])
    out = ["## Forgetting per task", "", "| task | " + " | ".join(METRIC_LABELS.get(m, m) for m in shown) + " |",
           "|---" * (len(shown) + 1) + "|"]
    for task in rows:
        out.append(f"| {task} | " + " | ".join(_fmt(summary[m]["fm_per_task"].get(task)) for m in shown) + " |")
    return out + [""]


def _matrix_table(path: Path) -> list[str]:
    import csv

    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return []
    header = ["after \\ on", *rows[0][1:]]
    out = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for row in rows[1:]:
        cells = [_fmt(float(v)) if v not in ("", "nan") else "n/a" for v in row[1:]]
        out.append(f"| {row[0]} | " + " | ".join(cells) + " |")
    return out
