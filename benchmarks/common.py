"""Shared helpers for the benchmarks: repo on sys.path, quiet logs, timers, result records.

Every benchmark prints and returns ratios measured within one process run, since absolute
times on a shared machine mean little.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # benchmark this checkout, not an installed copy

log = logging.getLogger("bench")


def setup_logging() -> None:
    """INFO for the benchmarks, warnings only for the libraries."""
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("anomalib", "lightning", "lightning.pytorch", "lightning_fabric", "timm", "cl_iad", "PIL", "matplotlib", "wandb"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TQDM_DISABLE", "1")


@contextmanager
def timed(record: dict, key: str):
    """Store the wall time of the block in ``record[key]`` (seconds)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        record[key] = time.perf_counter() - start
        log.info("%s: %.2f s", key, record[key])


def work_dir(name: str) -> Path:
    """A scratch folder for one benchmark under results/bench (git-ignored)."""
    path = REPO / "results" / "bench" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def emit(name: str, figures: dict) -> dict:
    """Print one benchmark's figures as a JSON line (run_all.py collects them) and return them."""
    print("BENCH " + json.dumps({"name": name, **figures}), flush=True)
    return figures
