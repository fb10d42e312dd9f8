"""A W&B Report of a sweep: forgetting curves and matrices, built with ``wandb-workspaces``.

Offline (no key, or ``--wandb offline``) the report definition is written to disk as JSON and
the command that publishes it later is printed; publishing rebuilds the same report from the
file, so what was reviewed offline is what goes online.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from .report import find_runs

log = logging.getLogger(__name__)


def report_definition(root: Path | str, project: str, entity: str = "") -> dict:
    """A plain-data description of the report for the runs below `root`."""
    runs = find_runs(root)
    groups = sorted({json.loads((r.run_dir / "config.json").read_text(encoding="utf-8"))["settings"].get("sweep", "") for r in runs})
    tasks: list[str] = []
    for r in runs:
        for m in r.matrices.values():
            tasks += [str(c) for c in m.columns if str(c) not in tasks]
            break
    metrics = sorted({m for r in runs for m in r.matrices})
    panels = [{"title": f"{m}: score of each task after each step", "x": "task",
               "y": [f"{m}/{t}" for t in tasks]} for m in metrics]
    return {"project": project, "entity": entity, "title": f"cl_iad forgetting report ({', '.join(g for g in groups if g) or 'runs'})",
            "description": "Forgetting curves (per-task scores over training steps, step metric 'task') and "
                           "accuracy matrices logged by cl_iad. Runs are grouped by sweep.",
            "groups": groups, "groupby": ["model", "strategy"], "panels": panels,
            "matrix_tables": [f"matrix/{m}" for m in metrics], "n_runs": len(runs)}


def build_report(defn: dict):
    """The ``wandb_workspaces`` Report object for a definition (no network until ``.save()``)."""
    from ._extras import require

    wr = require("wandb_workspaces.reports.v2", extra="wandb-reports", purpose="cl-iad wandb-report")
    group_filter = " or ".join(f"Config('sweep') = '{g}'" for g in defn["groups"] if g)
    runset = wr.Runset(entity=defn["entity"], project=defn["project"], name="sweep runs",
                       filters=group_filter, groupby=list(defn["groupby"]))
    blocks = [wr.H1(defn["title"]), wr.P(defn["description"])]
    for panel in defn["panels"]:
        blocks.append(wr.PanelGrid(runsets=[runset], panels=[wr.LinePlot(title=panel["title"], x=panel["x"],
                                                                          y=panel["y"])]))
    blocks.append(wr.H2("Accuracy matrices"))
    blocks.append(wr.P("Logged per run as tables: " + ", ".join(defn["matrix_tables"])))
    return wr.Report(project=defn["project"], entity=defn["entity"], title=defn["title"],
                     description=defn["description"], blocks=blocks)


def wandb_report(root: Path | str, project: str = "cl_iad", entity: str = "", mode: str | None = None) -> str:
    """Publish the report when online with a key, else write its definition; returns a message."""
    root = Path(root)
    defn_path = root / "wandb_report.json"
    defn = report_definition(root, project, entity)
    online = (mode or ("online" if os.environ.get("WANDB_API_KEY") else "offline")) == "online"
    defn_path.write_text(json.dumps(defn, indent=2), encoding="utf-8")
    if not online:
        return (f"W&B is offline: report definition written to {defn_path}.\nPublish it later, after "
                f"'wandb sync' of the runs, with:\n  WANDB_API_KEY=... cl-iad wandb-report {root} --project {project}"
                f"{' --entity ' + entity if entity else ''} --online")
    report = build_report(defn)
    report.save()
    return f"published W&B report: {report.url}"
