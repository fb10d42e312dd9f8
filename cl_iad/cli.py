"""Command line: ``cl-iad run`` and ``cl-iad models``."""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from pathlib import Path

from .results import METRICS

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
    r.add_argument("--dataset", default="synthetic", choices=["synthetic", "folder"],
                   help="synthetic: built-in generator; folder: categories in MVTec AD layout under --root")
    r.add_argument("--root", type=Path, help="dataset root (for synthetic: where to generate, default a temp dir)")
    r.add_argument("--categories", help="comma-separated subset of categories")
    r.add_argument("--n-tasks", type=int, default=5, help="synthetic: number of categories when none are named")
    r.add_argument("--order", default="alphabetical",
                   help="alphabetical | reverse | random:SEED | comma-separated category names")
    r.add_argument("--model", default="patchcore", help="model name (see 'cl-iad models')")
    r.add_argument("--strategy", default="naive",
                   help="regime, or comma-separated regimes run one after another: "
                        "naive,replay,cumulative,joint,per_task")
    r.add_argument("--backbone", default="efficientnet_lite0", help="efficientnet_lite0 | resnet18 | wide_resnet50_2")
    r.add_argument("--weights", help="local backbone weights file, or 'random' (smoke tests only)")
    r.add_argument("--image-size", type=int, help="square input size (default 128 synthetic, 256 folder)")
    r.add_argument("--buffer-size", type=int, default=20, help="replay: images kept from past tasks")
    r.add_argument("--buffer-policy", default="reservoir", help="replay: reservoir | task_balanced")
    r.add_argument("--metrics", default=",".join(METRICS), help="comma-separated metrics")
    r.add_argument("--cache-dir", type=Path,
                   help="also keep backbone features on disk here (large streams; reused by restarts and later runs)")
    r.add_argument("--cache-memory-mb", type=float,
                   help="bound on features held in memory (default unbounded; with --cache-dir the rest stays on disk)")
    r.add_argument("--bank-budget", type=int, help="memory-bank models: cap on memory-bank rows (coreset down to it)")
    r.add_argument("--no-checkpoint", action="store_true",
                   help="do not save the model after each task (a restart then re-fits earlier tasks)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--out", type=Path, default=Path("results"), help="output folder; each run gets a subfolder")
    r.add_argument("--name", help="run folder name (default derived from the settings)")
    r.add_argument("--overwrite", action="store_true", help="replace an existing run folder's results")
    r.add_argument("--wandb", default="offline", choices=["off", "offline", "online"])
    r.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    sub.add_parser("models", help="list the available models")
    return p


def _scenario(args):
    from .scenarios import from_folder, synthetic

    cats = _csv_list(args.categories)
    if args.dataset == "synthetic":
        return synthetic(args.root, categories=cats, n_tasks=args.n_tasks, order=args.order,
                         image_size=args.image_size or 128, seed=args.seed)
    if args.root is None:
        raise SystemExit("error: --dataset folder needs --root PATH (a folder of MVTec AD-layout categories)")
    return from_folder(args.root, cats, args.order, args.image_size or 256)


def cmd_run(args) -> int:
    from .cache import FeatureCache
    from .console import print_result
    from .runner import run
    from .strategies import Strategy, build_model
    from .strategies.base import REGIMES

    regimes = _csv_list(args.strategy) or ["naive"]
    bad = [r for r in regimes if r not in REGIMES]
    if bad:
        raise SystemExit(f"error: unknown strategy {bad}; choose from {', '.join(REGIMES)}")
    scenario = _scenario(args)
    log.info("stream of %d tasks: %s", len(scenario), " -> ".join(scenario.names))
    name = None
    cache = FeatureCache(args.cache_dir, args.cache_memory_mb)  # shared: every regime reuses the features
    extra = {} if args.bank_budget is None else {"max_bank_size": args.bank_budget}
    for regime in regimes:
        start = time.perf_counter()
        try:
            model = build_model(args.model, backbone=args.backbone, weights=args.weights, seed=args.seed, **extra)
        except TypeError as exc:
            raise ValueError(f"--bank-budget applies to memory-bank models such as patchcore, not {args.model!r} "
                             f"({exc}); drop the option") from None
        strategy = Strategy(model, regime, buffer_size=args.buffer_size, buffer_policy=args.buffer_policy,
                            seed=args.seed, cache=cache)
        if args.name:
            name = args.name if len(regimes) == 1 else f"{args.name}-{regime}"
        result = run(strategy, scenario, args.out, name=name, metrics=_csv_list(args.metrics),
                     wandb=args.wandb, progress=not args.no_progress, overwrite=args.overwrite,
                     checkpoint=not args.no_checkpoint)
        print_result(result, strategy, time.perf_counter() - start)
    return 0


def cmd_models(_args) -> int:
    from .strategies.models import MODELS

    for name, cls in MODELS.items():
        print(f"{name:12s} family={cls.family:22s} task={cls.task_type}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("anomalib", "timm", "lightning", "urllib3", "wandb", "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _quiet_third_party()
    from .backbones import WeightsError
    from .runner import RunConfigMismatch
    from .scenarios.base import DatasetLayoutError

    try:
        return {"run": cmd_run, "models": cmd_models}[args.command](args)
    except (DatasetLayoutError, WeightsError, RunConfigMismatch, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
