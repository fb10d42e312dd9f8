"""Sweeps: expand a YAML grid (models x strategies x orders x streams) into runs, execute locally or on Ray.

The streams of a sweep are one stream over ``categories`` (the default), one stream per grouping
protocol of ``groups`` (e.g. ``["1x15", "14-1", "10-5"]``), or, with ``per_category: true``, one
1-task stream per category (the single-task benchmark table). A ``models`` entry may carry its own
``strategies`` (replacing the sweep's list for that model) and ``image_size`` (e.g. CS-Flow at 768).

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
            _check_model_entry(entry["name"], kwargs)
            out.append((entry["name"], kwargs))
        else:
            raise SweepConfigError(f"models: entry {entry!r} must be a name or a mapping with 'name'")
    return out


# keys of a `models` entry that are not constructor arguments of the model
MODEL_ENTRY_KEYS = ("preset", "device", "strategies", "image_size", "eval_mode")


def _check_model_entry(name: str, kwargs: dict) -> None:
    strategies = kwargs.get("strategies")
    if strategies is not None and (not isinstance(strategies, list) or not strategies
                                   or not all(isinstance(s, str) for s in strategies)):
        raise SweepConfigError(f"models: {name}.strategies must be a non-empty list of regimes, e.g. [naive, replay]; "
                               f"got {strategies!r}")
    size = kwargs.get("image_size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
        raise SweepConfigError(f"models: {name}.image_size must be a positive integer (pixels); got {size!r}")


def _expand_streams(cfg: dict) -> list[tuple[str, dict]]:
    """The streams of a sweep as (run-name suffix, data settings that override the sweep's).

    ``per_category: true`` gives one 1-task stream per entry of ``categories``; ``groups`` one
    stream per grouping protocol (``null`` or ``"1xN"`` for one category per task); neither gives
    the sweep's one stream.
    """
    per_category, groups = cfg.get("per_category", False), cfg.get("groups")
    if not isinstance(per_category, bool):
        raise SweepConfigError(f"per_category must be true or false, got {per_category!r}")
    if per_category and (groups is not None or cfg.get("group") is not None):
        raise SweepConfigError("per_category: true makes 1-task streams, which cannot be grouped; drop 'group'/'groups'")
    if groups is not None and cfg.get("group") is not None:
        raise SweepConfigError("give either 'group' (one protocol) or 'groups' (a list of protocols), not both")
    categories = cfg.get("categories")
    if isinstance(categories, str):
        categories = [c.strip() for c in categories.split(",") if c.strip()]
    if per_category:
        if not categories or not isinstance(categories, list):
            raise SweepConfigError("per_category: true needs the list of categories under 'categories' "
                                   "(e.g. the 15 of MVTec AD)")
        _refuse_duplicates("categories", [str(c) for c in categories])
        return [(str(c), {"categories": [str(c)]}) for c in categories]
    if groups is None:
        return [("", {})]
    if not isinstance(groups, list) or not groups:
        raise SweepConfigError(f"groups must be a non-empty list of protocols such as ['1x15', '14-1', '10-5'], "
                               f"got {groups!r}")
    from .scenarios.streams import parse_group

    labels = ["" if g is None else str(g).strip() for g in groups]
    _refuse_duplicates("groups", labels)
    for g in labels:
        if not g:
            continue
        try:
            parse_group(g, len(categories) if categories else _sizes_total(g))
        except ValueError as exc:
            raise SweepConfigError(f"groups: {exc}") from exc
    return [(g, {"group": g or None}) for g in labels]


def _sizes_total(group: str) -> int:
    """A category count that `group` splits exactly, so that, when the sweep lists no categories,
    :func:`parse_group` checks only the protocol's syntax (the dataset's count is known at run time)."""
    total = 0
    for part in group.split("-"):
        size, _, count = part.partition("x")
        total += int(size) * int(count or 1) if size.isdigit() and (count or "1").isdigit() else 0
    return max(total, 1)


def _refuse_duplicates(key: str, values: list[str]) -> None:
    dupes = sorted({v for v in values if values.count(v) > 1})
    if dupes:
        raise SweepConfigError(f"{key}: {dupes} listed twice; each entry makes its own runs, list it once")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:60]


def load_config(path: Path | str) -> dict:
    """Read a sweep YAML file, with an error naming the file when it is missing or malformed."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise SweepConfigError(f"sweep config {path} not found; see experiments/configs/ for examples")
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SweepConfigError(f"sweep config {path} is not valid YAML: {exc}") from exc
    if not isinstance(cfg, dict):
        raise SweepConfigError(f"sweep config {path} must be a mapping at the top level")
    cfg.setdefault("name", path.stem)
    return cfg


DATASET_KEYS = ("dataset", "root", "categories", "n_tasks", "image_size", "group", "n_train", "n_test_good",
                "n_test_per_defect", "skip_bad", "layout")


def expand(cfg: dict, out_dir: Path | str) -> list[Job]:
    """All jobs of a sweep config: models x strategies x orders x streams, in a stable order, each with its Config."""
    unknown = set(cfg) - {*DATASET_KEYS, "name", "models", "strategies", "orders", "metrics", "seed", "wandb",
                          "strategy_kwargs", "resources", "executor", "workers", "description", "per_category",
                          "groups", "eval_mode"}
    if unknown:
        raise SweepConfigError(f"unknown keys in sweep config: {sorted(unknown)}")
    dataset = {k: cfg[k] for k in DATASET_KEYS if k in cfg}
    dataset.setdefault("dataset", "synthetic")
    from .results import METRICS

    metrics = list(cfg.get("metrics") or METRICS)
    strategies = cfg.get("strategies") or ["naive"]
    jobs = []
    streams = _expand_streams(cfg)
    for model, mkw in _expand_models(cfg.get("models")):
        for regime, order, (suffix, stream) in itertools.product(mkw.get("strategies") or strategies,
                                                                 _expand_orders(cfg.get("orders")), streams):
            jobs.append(_job(cfg, out_dir, dataset, metrics, model, mkw, regime, order, suffix, stream))
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise SweepConfigError("two sweep entries expand to the same run name; give models distinct presets")
    return jobs


def _job(cfg: dict, out_dir: Path | str, dataset: dict, metrics: list[str], model: str, mkw: dict, regime: str,
         order: str, suffix: str, stream: dict) -> Job:
    """One run of a sweep: the sweep's dataset keys, overridden by the model entry's and the stream's."""
    from .config import Config, ConfigError

    preset = mkw.get("preset")
    eval_mode = mkw.get("eval_mode", cfg.get("eval_mode", "aware"))
    parts = [dataset["dataset"], model + (f"_{preset}" if preset else ""),
             regime + ("_agnostic" if eval_mode == "agnostic" else ""), order] + ([suffix] if suffix else [])
    name = "-".join(_slug(p) for p in parts)
    params = {k: v for k, v in mkw.items() if k not in MODEL_ENTRY_KEYS}
    data = {**dataset, **({"image_size": mkw["image_size"]} if "image_size" in mkw else {}), **stream}
    try:
        config = Config.from_dict({
            "data": {**data, "order": order},
            "model": {"name": model, "preset": preset, "params": params, "device": mkw.get("device")},
            "strategy": {"name": regime, "eval_mode": eval_mode, "params": dict(cfg.get("strategy_kwargs") or {})},
            "run": {"out": str(out_dir), "name": name, "metrics": metrics, "seed": int(cfg.get("seed", 0)),
                    "wandb": cfg.get("wandb", "off"), "progress": False},
        }, source=f"sweep {cfg.get('name', '')}".strip())
    except ConfigError as exc:
        raise SweepConfigError(str(exc)) from exc
    return Job(name=name, out_dir=str(out_dir), config=config.to_dict(), group=str(cfg["name"]))


def build_scenario(dataset: dict, order: str, seed: int = 0):
    """The scenario of a sweep's dataset keys in one order (see :meth:`cl_iad.config.Config.build_scenario`)."""
    from .config import Config

    return Config.from_dict({"data": {**dataset, "order": order}, "run": {"seed": seed, "progress": False}}
                            ).build_scenario()


def _is_finished(run_dir: Path) -> bool:
    return (run_dir / "summary.json").is_file() and (run_dir / "plots").is_dir()


def execute_job(job: Job | dict, threads: int | None = None, wait: bool = False) -> dict:
    """Run one job (skipping it when finished); never raises an Exception, returns a status record.

    A run folder held by another process (another sweep on the same folder, or an earlier attempt
    still alive) is not launched a second time: its status is "busy", naming the holder. With
    `wait` (a retry after a worker died) the job waits for the holder instead, then resumes.
    """
    if isinstance(job, dict):
        job = Job(**job)
    import torch

    from .errors import RunLocked

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
            extra_config={"sweep": job.group, "strategy": job.strategy}, wait=wait)
        (run_dir / "error.txt").unlink(missing_ok=True)
        return {"name": job.name, "status": "done", "seconds": time.perf_counter() - start, "error": "",
                "gpus": os.environ.get("CUDA_VISIBLE_DEVICES", "")}
    except RunLocked as exc:  # the folder is another process's: write nothing into it
        log.warning("run %s not launched: %s holds it", job.name, exc.holder)
        return {"name": job.name, "status": "busy", "seconds": time.perf_counter() - start,
                "error": f"held by {exc.holder}"}
    except Exception as exc:  # noqa: BLE001 - a failed run is recorded and must not stop the sweep
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "error.txt").write_text(traceback.format_exc(), encoding="utf-8")
        except OSError:  # a full disk must not turn a recorded failure into a crash of the sweep
            pass
        log.error("run %s failed: %s", job.name, exc)
        return {"name": job.name, "status": "failed", "seconds": time.perf_counter() - start,
                "error": f"{type(exc).__name__}: {exc}"}


class _Attempts:
    """How often each job was started and why earlier attempts ended: the ``attempts`` and ``notes``
    columns of sweep_status.csv. A job whose worker died is started again up to `max_retries` times."""

    def __init__(self, max_retries: int) -> None:
        self.max_retries = max(0, int(max_retries))
        self.count: dict[str, int] = {}
        self.notes: dict[str, list[str]] = {}

    def start(self, job: Job) -> bool:
        """Count a start of `job`; True for a retry (which waits for the run folder's lock)."""
        self.count[job.name] = self.count.get(job.name, 0) + 1
        return self.count[job.name] > 1

    def died(self, job: Job, why: str) -> bool:
        """Note that `job`'s worker died; True if it may be started again."""
        self.notes.setdefault(job.name, []).append(f"attempt {self.count[job.name]}: {why}")
        retry = self.count[job.name] <= self.max_retries
        log.warning("run %s: %s; %s", job.name, why,
                    "starting it again (it resumes from its cells and checkpoint)" if retry
                    else f"giving up after {self.count[job.name]} attempt(s) (--max-retries {self.max_retries})")
        return retry

    def record(self, rec: dict) -> dict:
        """`rec` with its attempts and notes."""
        return {**rec, "attempts": self.count.get(rec["name"], 1), "notes": "; ".join(self.notes.get(rec["name"], []))}

    def gave_up(self, job: Job) -> dict:
        return self.record({"name": job.name, "status": "failed", "seconds": 0.0,
                            "error": f"its worker died {self.count[job.name]} time(s)"})


def _local(jobs: list[Job], workers: int, max_retries: int = 1) -> Iterable[dict]:
    """Run the jobs here (one at a time) or in a pool of `workers` processes, retrying those whose worker died."""
    tries = _Attempts(max_retries)
    if workers <= 1:  # in this process: if it dies, the sweep dies with it and nothing is left to retry
        for job in jobs:
            tries.start(job)
            yield tries.record(execute_job(job))
        return
    queue = list(jobs)
    while queue:
        died: list[Job] = []
        yield from _pool_round(queue, workers, tries, died)  # leaves in `queue` the jobs it did not start
        for job in died:
            if tries.died(job, "its worker process died (a pool stops every worker when one dies)"):
                queue.append(job)
            else:
                yield tries.gave_up(job)


def _pool_round(queue: list[Job], workers: int, tries: _Attempts, died: list[Job]) -> Iterable[dict]:
    """Run jobs taken from `queue` in one process pool, at most `workers` at a time, until `queue` is empty
    or the pool breaks (a worker was killed): the jobs it was running then go to `died`."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    threads = max(1, (os.cpu_count() or 1) // workers)
    running: dict = {}
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        while (queue or running) and not died:
            while queue and len(running) < workers:  # bounded, so a broken pool stops only started jobs
                job = queue.pop(0)
                running[pool.submit(execute_job, asdict(job), threads, tries.start(job))] = job
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                job = running.pop(fut)
                if isinstance(fut.exception(), BrokenProcessPool):
                    died.append(job)
                else:
                    yield tries.record(fut.result())
    for fut, job in running.items():  # after a break: the pool has settled every future by now
        if isinstance(fut.exception(), BrokenProcessPool):
            died.append(job)
        else:
            yield tries.record(fut.result())


def _ray(jobs: list[Job], address: str | None, resources: dict, max_retries: int = 1) -> Iterable[dict]:
    """Run the jobs as Ray tasks; a task whose worker (or node) died is submitted again, up to
    `max_retries` times (Ray's own retries are off, so that each attempt is counted and noted)."""
    from ._extras import require
    from .errors import Terminated

    ray = require("ray", extra="ray", purpose="--executor ray")
    started_here = not ray.is_initialized()
    if started_here:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=int(resources.get("num_cpus_total", os.cpu_count() or 1)), include_dashboard=False,
                     log_to_driver=False)
    opts = {"num_cpus": float(resources.get("num_cpus", 1)), "num_gpus": float(resources.get("num_gpus", 0))}
    remote = ray.remote(max_retries=0, **opts)(execute_job)
    threads = max(1, int(opts["num_cpus"]))
    tries = _Attempts(max_retries)
    try:
        # Ray places each run on `num_gpus` GPUs (a fraction shares one) and sets the worker's
        # CUDA_VISIBLE_DEVICES to them, so a run's device "auto"/"cuda" is its own GPU
        check_gpu_request(opts["num_gpus"], _largest_node_gpus(ray), autoscaling=bool(address))
        pending = {remote.remote(asdict(job), threads, tries.start(job)): job for job in jobs}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(done[0])
            try:
                rec = ray.get(done[0])
            except ray.exceptions.RayError as exc:  # the worker process or its node died, or was preempted
                if isinstance(exc, ray.exceptions.RayTaskError) and not isinstance(exc.cause, Terminated):
                    raise  # execute_job itself raised: not a dead worker
                if tries.died(job, f"its Ray worker died ({_first_line(exc)})"):
                    pending[remote.remote(asdict(job), threads, tries.start(job))] = job
                else:
                    yield tries.gave_up(job)
                continue
            yield tries.record(rec)
    finally:
        if started_here:
            ray.shutdown()


def _largest_node_gpus(ray) -> float:
    """The most GPUs one live node of the Ray cluster has (a run's GPUs must all be on one node)."""
    return max((float(n["Resources"].get("GPU", 0)) for n in ray.nodes() if n.get("Alive")), default=0.0)


def check_gpu_request(per_run: float, cluster_gpus: float, autoscaling: bool = False) -> None:
    """Refuse a per-run GPU request no node can meet: Ray would keep such tasks pending forever.

    On a cluster given by address (which may autoscale) it only warns.
    """
    from .errors import UserError

    if per_run < 0:
        raise UserError(f"--num-gpus {per_run:g}: a run cannot take a negative number of GPUs")
    if per_run > 1 and per_run != int(per_run):
        raise UserError(f"--num-gpus {per_run:g}: Ray takes a fraction of one GPU (0.5: two runs per GPU) or a "
                        "whole number of GPUs per run, not a fraction above 1")
    if per_run <= cluster_gpus:
        return
    msg = f"--num-gpus {per_run:g} per run, but no node of the Ray cluster has more than {cluster_gpus:g} GPU(s)"
    if autoscaling:
        log.warning("%s; the runs wait until the cluster has them", msg)
        return
    raise UserError(f"{msg}: every run would wait forever. Use --num-gpus {min(cluster_gpus, 1):g} or less (0.5 "
                    "puts two runs on one GPU), or --executor local to run on the CPU")


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join((str(exc).strip().splitlines() or [""])[0].split())
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_sweep(cfg: dict, out_dir: Path | str, executor: str = "local", workers: int = 1, address: str | None = None,
              resources: dict | None = None, progress: bool = True,
              on_result: Callable[[dict], None] | None = None, max_retries: int = 1) -> list[dict]:
    """Execute every job of a sweep config; returns one status record per job.

    `resources` (Ray) is per run, e.g. {"num_cpus": 4, "num_gpus": 1}. A run whose worker process
    died (Ray, or a local pool of `workers` > 1) is started again up to `max_retries` times and
    resumes from its cells and checkpoint; sweep_status.csv records each run's attempts and what
    ended the earlier ones. A run folder held by another process is not launched again ("busy").
    """
    from tqdm.auto import tqdm

    from .errors import disk_errors

    if executor not in EXECUTORS:
        raise ValueError(f"--executor must be one of {EXECUTORS}, got {executor!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = expand(cfg, out_dir)
    with disk_errors("the sweep's job list", out_dir / "sweep.json"):
        (out_dir / "sweep.json").write_text(json.dumps({"config": cfg, "jobs": [j.name for j in jobs]}, indent=2,
                                                       default=str), encoding="utf-8")
    resources = {**(cfg.get("resources") or {}), **(resources or {})}
    stream = (_local(jobs, workers, max_retries) if executor == "local"
              else _ray(jobs, address, resources, max_retries))
    results = []
    counts = {"done": 0, "skipped": 0, "failed": 0}
    with tqdm(total=len(jobs), desc=f"sweep {cfg['name']}", unit="run", disable=not progress) as bar:
        for rec in stream:
            results.append(rec)
            counts[rec["status"]] = counts.get(rec["status"], 0) + 1
            bar.write(f"{rec['status']:>7}  {rec['name']}  {rec['seconds']:.1f}s  {rec['error']}".rstrip())
            bar.update(1)
            bar.set_postfix(counts)
            with disk_errors("the sweep's status table", out_dir / "sweep_status.csv"):
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


STATUS_COLUMNS = ("name", "status", "attempts", "seconds", "error", "notes", "gpus")


def _append_status(path: Path, rec: dict) -> None:
    """One row of sweep_status.csv; a table of an older version (fewer columns) is rewritten first."""
    if path.exists():
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            old = list(reader)
            header = tuple(reader.fieldnames or ())
        if header != STATUS_COLUMNS:
            from .results import atomic_write_text

            rows = [{"attempts": 1, "gpus": "", **{k: v for k, v in r.items() if k in STATUS_COLUMNS}} for r in old]
            atomic_write_text(path, _status_csv(rows, header=True))
    text = _status_csv([{**rec, "seconds": f"{rec['seconds']:.2f}"}], header=not path.exists())
    with path.open("a", newline="", encoding="utf-8") as fh:
        fh.write(text)


def _status_csv(rows: list[dict], header: bool) -> str:
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(STATUS_COLUMNS), extrasaction="ignore")
    if header:
        w.writeheader()
    w.writerows(rows)
    return buf.getvalue()
