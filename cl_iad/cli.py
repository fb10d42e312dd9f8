"""Command line: ``cl-iad run`` and ``cl-iad models``."""

from __future__ import annotations

import argparse
import logging
import sys
import time
import traceback
import warnings
from pathlib import Path

# cl_iad.results.METRICS, spelled out: importing results (pandas) would double the start-up time of every
# command, `cl-iad --help` included (tests/test_clean_import.py checks that the two agree)
METRICS = ("image_auroc", "pixel_auroc", "pro", "image_aupr", "pixel_aupr")

log = logging.getLogger("cl_iad")


def _quiet_third_party() -> None:
    """Silence deprecation chatter from timm/anomalib imports that users cannot act on."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*pkg_resources.*")


def _csv_list(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cl-iad", description="Continual-learning evaluation of anomaly detectors.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="train task after task and evaluate every task after each one")
    r.add_argument("--dataset", default="synthetic",
                   help="synthetic | mvtec | visa | btech | mvtec3d | kolektor | folder (categories in MVTec AD "
                        "layout, masks optional) | ucsdped | avenue | shanghaitech (video; options after a colon: "
                        "shanghaitech:frame_stride=5,frames_per_clip=40); chain datasets with '+', e.g. mvtec+visa")
    r.add_argument("--root", help="dataset root; comma-separated, one per dataset, for a chain "
                                  "(for synthetic: where to generate, default a temp dir); hf://ORG/NAME[@REVISION] "
                                  "reads a dataset repository on the Hugging Face Hub through its cache")
    r.add_argument("--categories", help="comma-separated subset of categories (dataset/category in a chain)")
    r.add_argument("--group", help="tasks of several categories: 14-1, 10-5, 3x5, 10-1x5 (default one per task)")
    r.add_argument("--eval-mode", default="aware", choices=["aware", "agnostic"],
                   help="per_task: aware = task id given at test time; agnostic = a router picks the task model")
    r.add_argument("--task-agnostic", action="store_true", help="same as --eval-mode agnostic")
    r.add_argument("--skip-bad", action="store_true",
                   help="skip unreadable or inconsistent files with a warning (counted in config.json)")
    r.add_argument("--n-tasks", type=int, default=5, help="synthetic: number of categories when none are named")
    r.add_argument("--n-train", type=int, help="synthetic: training images per category (default 20)")
    r.add_argument("--n-test-good", type=int, help="synthetic: normal test images per category (default 8)")
    r.add_argument("--n-test-per-defect", type=int, help="synthetic: test images per defect type (default 3)")
    r.add_argument("--layout", choices=["default", "mvtec_scale"], default="default",
                   help="synthetic: 'mvtec_scale' writes MVTec AD's 15 categories with its exact train and test "
                        "counts (3,629 + 1,725 images; default 256 px) instead of the small built-in categories")
    r.add_argument("--order", default="alphabetical",
                   help="alphabetical | reverse | random:SEED | comma-separated category names")
    r.add_argument("--model", default="patchcore", help="model name (see 'cl-iad models')")
    r.add_argument("--strategy", default="naive",
                   help="regime, or comma-separated regimes run one after another (one run folder each): "
                        "naive,replay,cumulative,joint,per_task (gradient-trained models also ewc,lwf)")
    r.add_argument("--strategy-param", action="append", default=[], metavar="KEY=VALUE",
                   help="a regime hyper-parameter (YAML value), e.g. --strategy-param ewc_lambda=50; repeatable")
    r.add_argument("--backbone", help="efficientnet_lite0 (default, weights built in) | resnet18 | resnet50 | "
                                      "wide_resnet50_2 (these need --weights)")
    r.add_argument("--preset", help="named settings: 'light' (small, CPU) or 'benchmark' (the MVTec AD table)")
    r.add_argument("--epochs", type=int, help="gradient-trained models: epochs per task")
    r.add_argument("--device", help="torch device of every stage (backbone, cache, coreset, k-NN, training): "
                                    "auto (default: CUDA when present, else the CPU), cpu, cuda, cuda:1")
    r.add_argument("--precision", choices=["32", "16-mixed", "bf16-mixed"],
                   help="frozen-feature models: precision of the backbone pass (torch.autocast; the features are "
                        "kept in float32). Default 32. Same as --param precision=...")
    r.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="a model hyper-parameter (YAML value), e.g. --param vq_weights=vq.pckl; repeatable")
    r.add_argument("--config", type=Path,
                   help="YAML file: a run's RUN_DIR/config.yaml (sections data, model, strategy, run) to repeat "
                        "it, or a 'model' section (name, preset, params) with run options (see "
                        "experiments/configs/seed_mvtec/); options typed on the command line override it")
    r.add_argument("--weights", help="local backbone weights file, or 'random' (smoke tests only)")
    r.add_argument("--image-size", type=int, help="square input size (default 128 synthetic, 256 datasets, "
                                                   "anomalib's default)")
    r.add_argument("--normalization", default="backbone", choices=["backbone", "imagenet", "none"],
                   help="input normalisation: the backbone's statistics (default; ImageNet for ResNets, as "
                        "anomalib), ImageNet's, or none")
    r.add_argument("--buffer-size", type=int, help="replay: images kept from past tasks (default 20)")
    r.add_argument("--buffer-policy", help="replay: reservoir (default) | task_balanced")
    r.add_argument("--metrics", default=",".join(METRICS), help="comma-separated metrics")
    r.add_argument("--cache-dir", type=Path,
                   help="also keep backbone features on disk here (large streams; reused by restarts and later runs)")
    r.add_argument("--cache-memory-mb", type=float,
                   help="bound on features held in host memory (default unbounded; with --cache-dir the rest stays on "
                        "disk)")
    r.add_argument("--cache-device-mb", type=float,
                   help="bound on features kept on the GPU (default unbounded); the least recently used move to "
                        "pinned host memory, then (--cache-memory-mb, --cache-dir) to disk")
    r.add_argument("--bank-budget", type=int, help="memory-bank models: cap on memory-bank rows (coreset down to it)")
    r.add_argument("--no-checkpoint", action="store_true",
                   help="do not save the model after each task (a restart then re-fits earlier tasks)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--out", type=Path, default=Path("results"), help="output folder; each run gets a subfolder")
    r.add_argument("--name", help="run folder name (default derived from the settings)")
    r.add_argument("--overwrite", action="store_true", help="replace an existing run folder's results")
    r.add_argument("--wait", action="store_true",
                   help="if another process is running this run folder, wait for it to finish instead of stopping")
    r.add_argument("--wandb", default="offline", choices=["off", "offline", "online"])
    r.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    m = sub.add_parser("models", help="list the available models")
    m.add_argument("--presets", action="store_true", help="also show each model's preset settings")
    m.add_argument("--all", action="store_true",
                   help="also try every image model of anomalib through the generic adapter, offline (minutes): "
                        "which run, which need weights to be downloaded, which fail, with the reason")


    sw = sub.add_parser("sweep", help="run a grid of orders x models x strategies from a YAML file")
    sw.add_argument("config", type=Path, help="sweep YAML, e.g. experiments/configs/synthetic_cpu.yaml")
    sw.add_argument("--out", type=Path, default=Path("results/sweeps"), help="folder for the sweep's run folders")
    sw.add_argument("--executor", default="local", choices=["local", "ray"])
    sw.add_argument("--workers", type=int, default=1, help="local: runs in parallel (a bounded process pool)")
    sw.add_argument("--address", help="ray: address of an existing cluster (default: start a local one)")
    sw.add_argument("--num-cpus", type=float, help="ray: CPUs per run")
    sw.add_argument("--num-gpus", type=float, help="ray: GPUs per run; Ray places each run on its own GPU(s) (1), or "
                    "shares one between runs (0.5: two per GPU); sweep_status.csv records which")
    sw.add_argument("--wandb", choices=["off", "offline", "online"], help="override the config's wandb mode")
    sw.add_argument("--no-report", action="store_true", help="skip writing the report at the end")
    sw.add_argument("--max-retries", type=int, default=1,
                    help="times a run whose worker process died is started again (default 1)")

    pr = sub.add_parser("predict", help="score new images with a saved model (a run's model/ folder)")
    pr.add_argument("--model-dir", type=Path, required=True,
                    help="RUN_DIR/model of a finished run, or hf://ORG/NAME[@REVISION] (a run pushed with "
                         "'cl-iad push', fetched once into the Hugging Face cache; HF_HUB_OFFLINE=1: cache only)")
    pr.add_argument("--input", required=True, help="an image, a folder of images, or a quoted glob")
    pr.add_argument("--task", help="task name (task-aware); without it the router or the all-task threshold is used")
    pr.add_argument("--out", type=Path, default=Path("predictions"), help="output folder")

    pu = sub.add_parser("push", help="upload a finished run to the Hugging Face Hub (model as safetensors, "
                                     "matrices, plots, model card)")
    pu.add_argument("run_dir", type=Path, help="the run's folder (RESULTS/RUN_NAME)")
    pu.add_argument("--repo-id", required=True, help="ORG/NAME of the model repository (created if missing)")
    pu.add_argument("--private", action="store_true", help="create the repository private")
    pu.add_argument("--revision", help="branch to push to (created from the default branch if missing)")

    sh = sub.add_parser("show", help="grid of example heatmaps per task after each training step")
    sh.add_argument("run_dir", type=Path)
    sh.add_argument("--out", type=Path, help="PNG path (default RUN_DIR/plots/examples_grid.png)")
    sh.add_argument("--wandb", default="off", choices=["off", "offline", "online"], help="also log the grid")

    rp = sub.add_parser("report", help="tables, plots and HTML over all runs below a folder")
    rp.add_argument("root", type=Path)
    rp.add_argument("--out", type=Path, help="report folder (default ROOT/report)")
    rp.add_argument("--layout", default="default", choices=["default", "seed", "continual"],
                    help="default: methods x categories, ACC/BWT/FM, plots and index.html; seed: the published "
                         "single-task MVTec AD table (1-task runs: one table per metric, models x categories, "
                         "percent); continual: per model, regime and protocol, final scores and FM under both "
                         "definitions (Chaudhry, IM-IAD), with the published IM-IAD and CLAD values beside ours "
                         "where they exist")
    rp.add_argument("--reference", action="store_true",
                    help="--layout seed: put the published value and ours minus it beside each cell")

    wr = sub.add_parser("wandb-report", help="create a W&B Report of a sweep (offline: write its definition)")
    wr.add_argument("root", type=Path)
    wr.add_argument("--project", default="cl_iad")
    wr.add_argument("--entity", default="")
    wr.add_argument("--online", action="store_true", help="publish now (needs WANDB_API_KEY)")
    p.subcommands = {"run": r, "models": m, "sweep": sw, "predict": pr, "push": pu, "show": sh, "report": rp,
                     "wandb-report": wr}
    return p


def cmd_run(args) -> int:
    configs = config_from_args(args).for_each_regime()  # one config, and one config.yaml, per run
    for config in configs:
        config.check()  # unknown model, regime or bank budget: refused before any data is read
    from .console import print_result
    from .runner import run

    scenario = configs[0].build_scenario()  # every regime reads the same stream...
    log.info("stream of %d tasks: %s", len(scenario), " -> ".join(scenario.names))
    cache = configs[0].build_cache()  # ...and reuses the same features
    for config in configs:
        start = time.perf_counter()
        strategy = config.build_strategy(cache)
        result = run(strategy, scenario, **config.run_kwargs(), wait=getattr(args, "wait", False))  # writes config.yaml
        print_result(result, strategy, time.perf_counter() - start)
    return 0


def config_from_args(args):
    """The :class:`~cl_iad.config.Config` of ``cl-iad run`` options, merged with ``--config`` (typed options win).

    Several comma-separated regimes stay in one config; :meth:`Config.for_each_regime` splits them.
    """
    from .config import Config

    params = _apply_config(args)
    seed = params.pop("seed")
    device = params.pop("device", None)
    strategy_params = dict(getattr(args, "strategy_params_", None) or {})
    strategy_params.update({k: getattr(args, k) for k in ("buffer_size", "buffer_policy")
                            if getattr(args, k) is not None})
    strategy_params.update(_parse_params(args.strategy_param, "--strategy-param", "ewc_lambda=50"))
    return Config.from_dict({
        "data": {"dataset": args.dataset, "root": _text(args.root), "categories": _csv_list(args.categories),
                 "group": args.group, "order": str(args.order), "n_tasks": args.n_tasks,
                 "image_size": args.image_size, "skip_bad": args.skip_bad, "n_train": args.n_train,
                 "n_test_good": args.n_test_good, "n_test_per_defect": args.n_test_per_defect,
                 "layout": args.layout},
        "model": {"name": args.model, "preset": args.preset, "params": params, "device": device},
        "strategy": {"name": args.strategy, "eval_mode": "agnostic" if args.task_agnostic else args.eval_mode,
                     "params": strategy_params},
        "run": {"out": str(args.out), "name": args.name, "metrics": _csv_list(args.metrics) or list(METRICS),
                "seed": seed, "wandb": args.wandb, "checkpoint": not args.no_checkpoint,
                "cache_dir": _text(args.cache_dir), "cache_memory_mb": args.cache_memory_mb,
                "cache_device_mb": args.cache_device_mb,
                "bank_budget": args.bank_budget, "overwrite": args.overwrite, "progress": not args.no_progress},
    }, source="the command line")


def _text(value) -> str | None:
    """A path option as text in the config (None stays None)."""
    return None if value is None else str(value)


def _parse_params(items: list[str], option: str = "--param", example: str = "flow_steps=4") -> dict:
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: {option} {item!r} is not KEY=VALUE (e.g. {option} {example})")
        out[key.strip()] = yaml.safe_load(value)
    return out


# keys of the flat --config format (experiments/configs/seed_mvtec/*.yaml): a `model` section and these
_RUN_KEYS = ("dataset", "root", "categories", "n_tasks", "order", "strategy", "image_size", "buffer_size",
             "buffer_policy", "metrics", "seed", "out", "name", "wandb", "device", "group", "skip_bad", "eval_mode",
             "n_train", "n_test_good", "n_test_per_defect", "layout")
_FLAT_MODEL_KEYS = ("name", "preset", "params", "device")
# option destinations of each key of the nested format (RUN_DIR/config.yaml); checkpoint and
# progress are the negations of --no-checkpoint and --no-progress
_NESTED_TO_OPTIONS = {
    "data": {k: k for k in ("dataset", "root", "categories", "group", "order", "n_tasks", "image_size", "skip_bad",
                            "n_train", "n_test_good", "n_test_per_defect", "layout")},
    "model": {"name": "model", "preset": "preset", "device": "device"},
    "strategy": {"name": "strategy", "eval_mode": "eval_mode"},
    "run": {k: k for k in ("out", "name", "metrics", "seed", "wandb", "cache_dir", "cache_memory_mb",
                           "cache_device_mb", "bank_budget", "overwrite")},
}
_NEGATED = {("run", "checkpoint"): "no_checkpoint", ("run", "progress"): "no_progress"}
_PATH_OPTIONS = ("out", "cache_dir")


def _read_config_file(path: Path) -> tuple[dict, dict, dict]:
    """A --config file as (option destination -> value, model params, regime params), either format."""
    import yaml

    from .config import Config, ConfigError

    if not path.is_file():
        raise SystemExit(f"error: --config {path} does not exist")
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"--config {path} is not readable YAML: {' '.join(str(exc).split())[:200]}") from exc
    if not isinstance(cfg, dict):
        raise ConfigError(f"--config {path} must be a mapping of options (see experiments/configs/)")
    if not any(k in cfg for k in ("data", "run")) and not isinstance(cfg.get("strategy"), dict):
        return _read_flat(path, cfg)
    config = Config.from_dict(cfg, source=path)  # checks every key and type
    options: dict = {}
    for section, keys in _NESTED_TO_OPTIONS.items():
        given = cfg.get(section) or {}
        options.update({dest: getattr(getattr(config, section), key) for key, dest in keys.items() if key in given})
    options.update({dest: not getattr(getattr(config, sec), key) for (sec, key), dest in _NEGATED.items()
                    if key in (cfg.get(sec) or {})})
    regime = dict(config.strategy.params)
    options.update({k: regime.pop(k) for k in ("buffer_size", "buffer_policy") if k in regime})
    return options, dict(config.model.params), regime


def _read_flat(path: Path, cfg: dict) -> tuple[dict, dict, dict]:
    """The flat format: a `model` section (name, preset, params, device) and run options."""
    model = cfg.pop("model", {}) or {}
    unknown = sorted(set(cfg) - set(_RUN_KEYS))
    if unknown:
        raise SystemExit(f"error: {path}: unknown keys {unknown}; allowed: model, {', '.join(_RUN_KEYS)} (or the "
                         "sections data, model, strategy, run of a RUN_DIR/config.yaml)")
    bad = sorted(set(model) - set(_FLAT_MODEL_KEYS)) if isinstance(model, dict) else ["model"]
    if bad:
        raise SystemExit(f"error: {path}: unknown key model.{bad[0]}; allowed in model: {', '.join(_FLAT_MODEL_KEYS)}")
    options = dict(cfg)
    options.update({dest: model[key] for key, dest in (("name", "model"), ("preset", "preset"), ("device", "device"))
                    if key in model})
    return options, dict(model.get("params") or {}), {}


def _apply_config(args) -> dict:
    """Merge a --config YAML into `args` (command line wins); return the model's settings.

    The settings are the model's constructor arguments (file params, then --param, then the
    options --backbone, --weights, --epochs, --normalization), the seed, and the device when one
    is given. The file's regime parameters other than buffer_size and buffer_policy go to
    ``args.strategy_params_``.
    """
    params: dict = {}
    args.strategy_params_ = {}
    given = getattr(args, "given_", None)
    if given is None:  # args not from main(): fall back to "differs from the default"
        defaults = build_parser().parse_args(["run"])
        given = {k for k, v in vars(args).items() if getattr(defaults, k, None) != v}
    if args.config is not None:
        options, file_params, args.strategy_params_ = _read_config_file(args.config)
        for key, value in options.items():
            if key not in given:  # an option typed on the command line always wins
                if isinstance(value, list):
                    value = ",".join(map(str, value))
                setattr(args, key, Path(value) if key in _PATH_OPTIONS and value is not None else value)
        params.update(file_params)
    params.update(_parse_params(args.param))
    params.update({k: v for k, v in (("backbone", args.backbone), ("weights", args.weights), ("epochs", args.epochs),
                                     ("precision", getattr(args, "precision", None))) if v is not None})
    params["seed"] = args.seed
    if args.normalization != "backbone":
        params["normalization"] = args.normalization
    elif "normalization" in given:  # typed: the default beats the file's value
        params.pop("normalization", None)
    if args.device is not None:
        params["device"] = args.device
    return params


def cmd_models(args) -> int:
    from .models.registry import MODEL_INFOS
    from .strategies import regimes_for

    print(f"{'name':22s} {'model':22s} {'family':20s} {'task':15s} regimes")
    for info in MODEL_INFOS:
        print(f"{info.name:22s} {info.title:22s} {info.family:20s} {info.task_type:15s} {','.join(regimes_for(info))}")
        if info.notes:
            print(f"{'':22s}   note: {info.notes}")
        if getattr(args, "presets", False):
            for preset, kw in info.presets.items():
                print(f"{'':22s}   {preset}: {kw}")
    if getattr(args, "all", False):
        from .models.anomalib_adapter import survey_anomalib_models, survey_table

        print("\nanomalib's image models through --model anomalib_adapter --param anomalib_model=NAME:")
        print(survey_table(survey_anomalib_models()))
    return 0


def cmd_sweep(args) -> int:
    from .report import make_report
    from .sweep import load_config, run_sweep

    cfg = load_config(args.config)
    if args.wandb:
        cfg["wandb"] = args.wandb
    resources = {k: v for k, v in {"num_cpus": args.num_cpus, "num_gpus": args.num_gpus}.items() if v is not None}
    results = run_sweep(cfg, args.out, executor=args.executor, workers=args.workers, address=args.address,
                        resources=resources, max_retries=args.max_retries)
    failed = [r for r in results if r["status"] == "failed"]
    busy = [r for r in results if r["status"] == "busy"]
    held = f", {len(busy)} held by another process and not launched again" if busy else ""
    print(f"sweep {cfg['name']}: {len(results) - len(failed) - len(busy)} runs ok, {len(failed)} failed{held} "
          f"(see {args.out / 'sweep_status.csv'})")
    if not args.no_report and len(failed) < len(results):
        print(f"report: {make_report(args.out) / 'index.html'}")
    return 1 if failed else 0


def cmd_predict(args) -> int:
    from .deploy import collect_inputs, load_strategy, predict_images

    loaded = load_strategy(args.model_dir)
    csv_path = predict_images(loaded, collect_inputs(args.input), args.task, args.out)
    import pandas as pd

    table = pd.read_csv(csv_path)
    print(table[["image", "task", "score", "threshold", "decision"]].to_string(index=False))
    print(f"predictions: {csv_path}\noverlays: {args.out / 'overlays'}")
    return 0


def cmd_push(args) -> int:
    from .hub import push

    url = push(args.run_dir, args.repo_id, private=args.private, revision=args.revision)
    print(f"pushed {args.run_dir} to {args.repo_id}: {url}\nload it with: cl-iad predict --model-dir "
          f"hf://{args.repo_id}{'@' + args.revision if args.revision else ''} --input IMAGES")
    return 0


def cmd_show(args) -> int:
    from .visualize import example_grid

    path = example_grid(args.run_dir, args.out)
    print(f"example grid: {path}")
    if args.wandb != "off":
        from .wandb_log import WandbRun

        wb = WandbRun(args.wandb, args.run_dir, f"{args.run_dir.name}-show", {"run": args.run_dir.name})
        wb.log_final({}, {}, [path])
        wb.finish()
    return 0


def cmd_report(args) -> int:
    from .report import make_layout_report, make_report

    layout = getattr(args, "layout", "default")
    if layout == "default":
        if getattr(args, "reference", False):
            raise SystemExit("error: --reference applies to --layout seed (the continual layout always shows the "
                             "published values); add --layout seed")
        out = make_report(args.root, args.out)
        for table in sorted(out.glob("table_*.md")):
            print(table.read_text(encoding="utf-8"))
        print(f"report: {out / 'index.html'}")
        return 0
    out, tables = make_layout_report(args.root, layout, args.out, reference=args.reference)
    for table in tables:
        print(table.read_text(encoding="utf-8"))
    print(f"{layout} tables (CSV, Markdown, LaTeX): {out}")
    return 0


def cmd_wandb_report(args) -> int:
    from .wandb_report import wandb_report

    print(wandb_report(args.root, args.project, args.entity, "online" if args.online else None))
    return 0


def given_options(argv: list[str]) -> set[str]:
    """Destinations of the options typed in `argv` (not those left at their defaults).

    Needed because a typed value can equal the default (``--seed 0``) and must still beat a
    --config file.
    """
    parser = build_parser()
    run = parser.subcommands["run"]  # the one command with a --config file to merge
    # a sentinel object, not argparse.SUPPRESS: argparse runs string defaults through `type`
    unset = object()
    run.set_defaults(**{k: unset for k, v in vars(run.parse_args([])).items() if not isinstance(v, list)})
    return {k for k, v in vars(parser.parse_known_args(argv)[0]).items() if v is not unset}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.given_ = given_options(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("anomalib", "timm", "lightning", "urllib3", "wandb", "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _quiet_third_party()
    commands = {"run": cmd_run, "models": cmd_models, "sweep": cmd_sweep, "report": cmd_report, "show": cmd_show,
                "predict": cmd_predict, "push": cmd_push, "wandb-report": cmd_wandb_report}
    from .errors import Terminated, signals_as_exceptions

    try:
        with signals_as_exceptions():  # SIGTERM: Terminated, raised between cells (see docs/faults.md)
            if getattr(args, "wandb", None):
                from .wandb_log import require_wandb_login

                require_wandb_login(args.wandb)  # before any data is read or task fitted
            return commands[args.command](args)
    except (KeyboardInterrupt, Terminated) as exc:
        print(_stopped(exc, args.command), file=sys.stderr)
        return getattr(exc, "exit_status", 130)
    except SystemExit as exc:
        if not isinstance(exc.code, str):  # argparse and sys.exit(n) keep their status
            raise
        return _user_error(exc.code.removeprefix("error: "), exc, args.verbose)
    except Exception as exc:  # noqa: BLE001 - the one place that turns any failure into one line
        return _failure(exc, args.verbose)


def _stopped(exc: BaseException, command: str) -> str:
    """The one line of a run stopped by Ctrl-C or SIGTERM: what is kept and how to resume."""
    cause = "interrupted (Ctrl-C)" if isinstance(exc, KeyboardInterrupt) else "stopped by SIGTERM"
    run_dir = getattr(exc, "run_dir", None)
    if command not in ("run", "sweep"):
        return cause
    kept = f"every cell finished is kept in {run_dir / 'cells.csv'}; " if run_dir is not None else ""
    return f"{cause}: {kept}run the same command again to resume where it stopped"


# Failures a user causes and fixes get "error: <cause and fix>" and status 2. ValueError and
# FileNotFoundError count as such: the library raises them for bad arguments and paths in modules
# that predate UserError. Anything else is a bug (status 1): one line that says so and how to see
# the traceback, since a traceback helps whoever fixes the bug but buries the message for a user.
def _failure(exc: Exception, verbose: bool) -> int:
    """Report `exc` on stderr in one line (a traceback too with -v); return the exit status."""
    from .backbones import WeightsError
    from .errors import UserError

    if isinstance(exc, (UserError, WeightsError, ValueError, FileNotFoundError)):
        return _user_error(str(exc), exc, verbose)
    if verbose:
        traceback.print_exception(exc, file=sys.stderr)
    how = "report it with the traceback above" if verbose else "rerun with -v for the traceback and report it"
    print(f"internal error: {type(exc).__name__}: {_one_line(str(exc))} (a bug in cl_iad or a library it uses; "
          f"{how})", file=sys.stderr)
    return 1


def _user_error(message: str, exc: BaseException, verbose: bool) -> int:
    if verbose:
        traceback.print_exception(exc, file=sys.stderr)
    print(f"error: {message.strip() or type(exc).__name__}", file=sys.stderr)
    return 2


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


if __name__ == "__main__":
    sys.exit(main())
