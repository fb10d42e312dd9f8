"""Weights & Biases logging, offline unless asked otherwise.

Avalanche's ``WandBLogger`` calls wandb APIs that no longer exist (for example
``wandb.run._label`` and the removed ``wandb.sklearn``-era helpers), so we talk to wandb
directly through its current public API: ``init``, ``define_metric``, ``log``, ``Table``,
``Image``, ``finish``.
"""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from urllib.parse import urlsplit

import pandas as pd

from .errors import UserError, WandbLoginError

log = logging.getLogger(__name__)
MODES = ("off", "offline", "online")
DEFAULT_HOST = "https://api.wandb.ai"


def require_wandb_login(mode: str) -> None:
    """For ``online``, raise :class:`WandbLoginError` unless a W&B key can be found, so a run
    fails before training rather than after it. Looks where wandb does: ``WANDB_API_KEY``,
    ``WANDB_IDENTITY_TOKEN_FILE``, and the netrc file ``wandb login`` writes ($NETRC or ~/.netrc)."""
    if mode not in MODES:
        raise UserError(f"--wandb must be one of {', '.join(MODES)}, not {mode!r}")
    if mode != "online" or os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return
    host = os.environ.get("WANDB_BASE_URL", DEFAULT_HOST)
    if _netrc_has_key(host):
        return
    raise WandbLoginError(f"--wandb online needs a W&B API key and none was found for {host}: set WANDB_API_KEY, "
                          "run 'wandb login', or use --wandb offline (and 'wandb sync' the run later)")


def _netrc_path() -> Path:
    if os.environ.get("NETRC"):
        return Path(os.environ["NETRC"]).expanduser()
    unix = Path("~/.netrc").expanduser()
    windows = Path("~/_netrc").expanduser()
    return windows if not unix.exists() and windows.exists() else unix


def _netrc_has_key(host: str) -> bool:
    """Whether the netrc file holds a password for `host` (as ``wandb login`` writes it)."""
    netloc = urlsplit(host).netloc or host
    try:
        creds = netrc.netrc(str(_netrc_path())).authenticators(netloc)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(creds and creds[2])


class WandbRun:
    """One W&B run per continual run; a no-op object when mode is ``off``."""

    def __init__(self, mode: str, run_dir: Path, name: str, config: dict, project: str = "cl_iad",
                 group: str | None = None) -> None:
        require_wandb_login(mode)
        self.mode = mode
        self.run = None
        if mode == "off":
            return
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
