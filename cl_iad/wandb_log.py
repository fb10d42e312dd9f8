"""Weights & Biases logging, offline unless asked otherwise.

Avalanche's ``WandBLogger`` calls wandb APIs that no longer exist (for example
``wandb.run._label`` and the removed ``wandb.sklearn``-era helpers), so we talk to wandb
directly through its current public API: ``init``, ``define_metric``, ``log``, ``Table``,
``Image``, ``finish``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)
MODES = ("off", "offline", "online")


class WandbRun:
    """One W&B run per continual run; a no-op object when mode is ``off``."""

    def __init__(self, mode: str, run_dir: Path, name: str, config: dict, project: str = "cl_iad",
                 group: str | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"--wandb must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.run = None
        if mode == "off":
            return
        if mode == "online" and not (os.environ.get("WANDB_API_KEY") or _has_netrc_key()):
            raise RuntimeError("--wandb online needs a key: run 'wandb login' or set WANDB_API_KEY, "
                               "or use --wandb offline and 'wandb sync' the run later")
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(project=project, name=name, group=group, config=config, mode=mode,
                              dir=str(run_dir), reinit="finish_previous",
                              settings=wandb.Settings(console="off", x_disable_stats=True))
        self.run.define_metric("task")
        self.run.define_metric("*", step_metric="task")

    @property
    def directory(self) -> Path | None:
        return Path(self.run.dir).parent if self.run is not None else None

    def log_row(self, task: int, values: dict[str, float]) -> None:
        """Log the cells of one row (after training `task`), with `task` as the step metric."""
        if self.run is not None:
            self.run.log({"task": task, **values})

    def log_final(self, matrices: dict[str, pd.DataFrame], summary: dict, plots: list[Path]) -> None:
        if self.run is None:
            return
        import wandb

        for metric, R in matrices.items():
            table = R.reset_index().rename(columns={"trained_upto": "after_training"})
            self.run.log({f"matrix/{metric}": wandb.Table(dataframe=table)})
        for metric, s in summary.items():
            for key in ("acc", "bwt", "fwt", "fm"):
                self.run.summary[f"{metric}/{key}"] = s[key]
        self.run.log({f"plots/{p.stem}": wandb.Image(str(p)) for p in plots})

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


def _has_netrc_key() -> bool:
    netrc = Path.home() / ".netrc"
    return netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore")
