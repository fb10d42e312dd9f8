"""Sweeps: expand a YAML grid (orders x models x strategies) into runs, execute locally or on Ray.

Each combination is one ordinary run directory with the foundation's file contract, so a sweep
is resumable for free: a finished run (complete ``summary.json``) is skipped, and a half-finished
run continues from its last complete cell through the runner's own resume. A failed run is
recorded with its error in ``sweep_status.csv`` and ``<run>/error.txt``, and the sweep goes on.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import os
import re
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")


class SweepConfigError(ValueError):
    """A sweep YAML file is malformed."""


@dataclass(frozen=True)
class Job:
    """One run of a sweep: its :class:`~cl_iad.config.Config` (as a plain dict, so it crosses processes)."""

    name: str
    out_dir: str
    config: dict
    group: str

    @property
    def order(self) -> str:
        return self.config["data"]["order"]

    @property
    def model(self) -> str:
        return self.config["model"]["name"]

    @property
    def model_kwargs(self) -> dict:
        """The sweep entry's model settings (preset included) besides the name."""
        m = self.config["model"]
        return {**({"preset": m["preset"]} if m["preset"] is not None else {}),
                **({"device": m["device"]} if m["device"] is not None else {}), **m["params"]}

    @property
    def strategy(self) -> str:
        return self.config["strategy"]["name"]


def _expand_orders(orders) -> list[str]:
    """`orders` entries are strings ("alphabetical", "random:3", "a,b,c") or {"random": [seeds]}."""
    if orders is None:
        return ["alphabetical"]
    if isinstance(orders, (str, dict)):
        orders = [orders]
    out: list[str] = []
    for entry in orders:
        if isinstance(entry, dict):
            for key, seeds in entry.items():
                if key != "random":
                    raise SweepConfigError(f"orders: unknown mapping key {key!r}; use random: [seeds]")
                out += [f"random:{int(s)}" for s in (seeds if isinstance(seeds, list) else [seeds])]
        elif isinstance(entry, list):
            out.append(",".join(entry))
        else:
            out.append(str(entry))
    return out


def _expand_models(models) -> list[tuple[str, dict]]:
    if not models:
        raise SweepConfigError("a sweep needs at least one entry under 'models'")
    out = []
    for entry in models:
        if isinstance(entry, str):
            out.append((entry, {}))
        elif isinstance(entry, dict) and "name" in entry:
            kwargs = {k: v for k, v in entry.items() if k != "name"}
            out.append((entry["name"], kwargs))
        else:
            raise SweepConfigError(f"models: entry {entry!r} must be a name or a mapping with 'name'")
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:60]


def load_config(path: Path | str) -> dict:
    """Read a sweep YAML file, with an error naming the file when it is missing or malformed."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise SweepConfigError(f"sweep config {path} not found; see experiments/configs/ for examples")
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SweepConfigError(f"sweep config {path} is not valid YAML: {exc}") from exc
    if not isinstance(cfg, dict):
        raise SweepConfigError(f"sweep config {path} must be a mapping at the top level")
    cfg.setdefault("name", path.stem)
    return cfg


DATASET_KEYS = ("dataset", "root", "categories", "n_tasks", "image_size", "group", "n_train", "n_test_good",
                "n_test_per_defect", "skip_bad")


def expand(cfg: dict, out_dir: Path | str) -> list[Job]:
    """All jobs of a sweep config: orders x models x strategies, in a stable order, each with its Config."""
    from .config import Config, ConfigError

    unknown = set(cfg) - {*DATASET_KEYS, "name", "models", "strategies", "orders", "metrics", "seed", "wandb",
                          "strategy_kwargs", "resources", "executor", "workers", "description"}
    if unknown:
        raise SweepConfigError(f"unknown keys in sweep config: {sorted(unknown)}")
    dataset = {k: cfg[k] for k in DATASET_KEYS if k in cfg}
    dataset.setdefault("dataset", "synthetic")
    from .results import METRICS

    metrics = list(cfg.get("metrics") or METRICS)
    strategies = cfg.get("strategies") or ["naive"]
    jobs = []
    for (model, mkw), regime, order in itertools.product(_expand_models(cfg.get("models")), strategies,
                                                         _expand_orders(cfg.get("orders"))):
        preset = mkw.get("preset")
        name = "-".join(_slug(p) for p in (dataset["dataset"], model + (f"_{preset}" if preset else ""), regime, order))
        params = {k: v for k, v in mkw.items() if k not in ("preset", "device")}
        try:
            config = Config.from_dict({
                "data": {**dataset, "order": order},
                "model": {"name": model, "preset": preset, "params": params, "device": mkw.get("device")},
                "strategy": {"name": regime, "params": dict(cfg.get("strategy_kwargs") or {})},
                "run": {"out": str(out_dir), "name": name, "metrics": metrics, "seed": int(cfg.get("seed", 0)),
                        "wandb": cfg.get("wandb", "off"), "progress": False},
            }, source=f"sweep {cfg.get('name', '')}".strip())
        except ConfigError as exc:
            raise SweepConfigError(str(exc)) from exc
        jobs.append(Job(name=name, out_dir=str(out_dir), config=config.to_dict(), group=str(cfg["name"])))
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise SweepConfigError("two sweep entries expand to the same run name; give models distinct presets")
    return jobs


def build_scenario(dataset: dict, order: str, seed: int = 0):
    """The scenario of a sweep's dataset keys in one order (see :meth:`cl_iad.config.Config.build_scenario`)."""
    from .config import Config

    return Config.from_dict({"data": {**dataset, "order": order}, "run": {"seed": seed, "progress": False}}
                            ).build_scenario()


def _is_finished(run_dir: Path) -> bool:
    return (run_dir / "summary.json").is_file() and (run_dir / "plots").is_dir()


def execute_job(job: Job | dict, threads: int | None = None) -> dict:
    """Run one job (skipping it when finished); never raises, returns a status record."""
    if isinstance(job, dict):
        job = Job(**job)
    import torch

    if threads:
        torch.set_num_threads(threads)
    run_dir = Path(job.out_dir) / job.name
    start = time.perf_counter()
    if _is_finished(run_dir):
        return {"name": job.name, "status": "skipped", "seconds": 0.0, "error": ""}
    try:
        import warnings

        warnings.filterwarnings("ignore", category=FutureWarning)
        from .config import Config
        from .runner import run

        config = Config.from_dict(job.config)
        scenario = config.build_scenario()
        strategy = config.build_strategy(config.build_cache())
        run(strategy, scenario, **config.run_kwargs(), wandb_group=job.group,
            extra_config={"sweep": job.group, "strategy": job.strategy})
        (run_dir / "error.txt").unlink(missing_ok=True)
        return {"name": job.name, "status": "done", "seconds": time.perf_counter() - start, "error": ""}
    except Exception as exc:  # noqa: BLE001 - a failed run is recorded and must not stop the sweep
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "error.txt").write_text(traceback.format_exc())
        log.error("run %s failed: %s", job.name, exc)
        return {"name": job.name, "status": "failed", "seconds": time.perf_counter() - start,
                "error": f"{type(exc).__name__}: {exc}"}


def _local(jobs: list[Job], workers: int) -> Iterable[dict]:
    if workers <= 1:
        for job in jobs:
            yield execute_job(job)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(execute_job, asdict(job), threads) for job in jobs]
        for fut in as_completed(futures):
            yield fut.result()


def _ray(jobs: list[Job], address: str | None, resources: dict) -> Iterable[dict]:
    try:
        import ray
    except ImportError as exc:
        raise RuntimeError("--executor ray needs Ray: pip install 'ray>=2.9'") from exc
    started_here = not ray.is_initialized()
    if started_here:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=int(resources.get("num_cpus_total", os.cpu_count() or 1)), include_dashboard=False,
                     log_to_driver=False)
    opts = {"num_cpus": float(resources.get("num_cpus", 1)), "num_gpus": float(resources.get("num_gpus", 0))}
    remote = ray.remote(**opts)(execute_job)
    threads = max(1, int(opts["num_cpus"]))
    pending = [remote.remote(asdict(job), threads) for job in jobs]
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
    finally:
        if started_here:
            ray.shutdown()


def run_sweep(cfg: dict, out_dir: Path | str, executor: str = "local", workers: int = 1, address: str | None = None,
              resources: dict | None = None, progress: bool = True,
              on_result: Callable[[dict], None] | None = None) -> list[dict]:
    """Execute every job of a sweep config; returns one status record per job.

    `resources` (Ray) is per run, e.g. {"num_cpus": 4, "num_gpus": 1}.
    """
    from tqdm.auto import tqdm

    if executor not in EXECUTORS:
        raise ValueError(f"--executor must be one of {EXECUTORS}, got {executor!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = expand(cfg, out_dir)
    (out_dir / "sweep.json").write_text(json.dumps({"config": cfg, "jobs": [j.name for j in jobs]}, indent=2,
                                                   default=str))
    resources = {**(cfg.get("resources") or {}), **(resources or {})}
    stream = _local(jobs, workers) if executor == "local" else _ray(jobs, address, resources)
    results = []
    counts = {"done": 0, "skipped": 0, "failed": 0}
    with tqdm(total=len(jobs), desc=f"sweep {cfg['name']}", unit="run", disable=not progress) as bar:
        for rec in stream:
            results.append(rec)
            counts[rec["status"]] += 1
            bar.write(f"{rec['status']:>7}  {rec['name']}  {rec['seconds']:.1f}s  {rec['error']}".rstrip())
            bar.update(1)
            bar.set_postfix(counts)
            _append_status(out_dir / "sweep_status.csv", rec)
            if on_result:
                on_result(rec)
    if cfg.get("wandb", "off") != "off" and any(r["status"] != "failed" for r in results):
        _log_summary_table(cfg, out_dir)
    return results


def _log_summary_table(cfg: dict, out_dir: Path) -> None:
    """One extra W&B run in the sweep's group holding the summary table across all runs."""
    import wandb

    from .report import find_runs, summary_table

    table = summary_table(find_runs(out_dir)).reset_index()
    run = wandb.init(project="cl_iad", name=f"{cfg['name']}-summary", group=str(cfg["name"]), mode=cfg["wandb"],
                     dir=str(out_dir), config={"sweep": cfg["name"], "kind": "summary"}, reinit="finish_previous",
                     settings=wandb.Settings(console="off", x_disable_stats=True))
    run.log({"sweep_summary": wandb.Table(dataframe=table.astype(str))})
    run.finish()


def _append_status(path: Path, rec: dict) -> None:
    new = not path.exists()
    with path.open("a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["name", "status", "seconds", "error"])
        if new:
            w.writeheader()
        w.writerow({**rec, "seconds": f"{rec['seconds']:.2f}"})
