"""(5b) The MVTec-scale PatchCore stream on a GPU: cl_iad against anomalib's Engine, task by task.

Runs only where CUDA is present (elsewhere it says so and exits 0), unless ``--device cpu`` asks for a
small smoke run of the same code on the CPU.

Data: the synthetic ``mvtec_scale`` stream (MVTec AD's 15 categories with its exact train and test
counts) at 256 px, or MVTec AD itself with ``--root DATASETS/MVTecAD``. Backbone ``wide_resnet50_2``
(layers 2 and 3, coreset 10 %, 9 neighbours: the published PatchCore settings), its weights from
timm's cache for both sides, so both compute the same features.

Three timed passes over the 15 categories, each on the same GPU:

* **anomalib**: for each category, ``Engine.fit`` then ``Engine.test`` of a fresh ``Patchcore`` on
  the ``MVTecAD`` datamodule (checkpoints, loggers and visualiser images off: they cost disk only);
  the anchor.
* **cl_iad replay**: one continual run, PatchCore with replay, every task fitted in turn and after
  each the full T x T evaluation (every seen task's test set: 120 evaluations instead of
  anomalib's 15), all on the GPU (backbone, feature cache, coreset, k-NN, metrics).
* **cl_iad naive**: the same stream fitted naively; its diagonal R[i][i] is a model fitted on
  category i alone, the same model anomalib fits, so its image AUROC is compared with anomalib's.

Printed: wall time of each pass and the ratio cl_iad / anomalib (goal <= 0.3 for the replay
stream), the image AUROC per category on both sides (goal |difference| <= 0.01), and each pass's
peak GPU memory (``torch.cuda.max_memory_allocated``).

    python benchmarks/bench_gpu.py                                       # 15 categories, 256 px, CUDA
    python benchmarks/bench_gpu.py --root /data/MVTecAD --dataset mvtec   # the real dataset
    python benchmarks/bench_gpu.py --device cpu --categories bottle --image-size 64 \\
        --backbone efficientnet_lite0 --layers blocks.2,blocks.4            # smoke run of the code on a CPU
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import emit, setup_logging, work_dir


def _peak_reset(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mb(device) -> float | None:
    import torch

    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


def _scenario(args, out: Path):
    from cl_iad.scenarios.folder import build_scenario

    categories = args.categories.split(",") if args.categories else None
    if args.dataset == "mvtec":
        return build_scenario("mvtec", args.root, categories, image_size=args.image_size)
    return build_scenario("synthetic", out / "data", categories, image_size=args.image_size, layout="mvtec_scale")


def _patchcore_kwargs(args) -> dict:
    return {"backbone": args.backbone, "layers": args.layers.split(","), "coreset_ratio": 0.1, "num_neighbors": 9}


def ours(args, scenario, regime: str, device, out: Path) -> dict:
    from cl_iad.cache import FeatureCache
    from cl_iad.runner import run
    from cl_iad.strategies import Strategy, build_model

    _peak_reset(device)
    start = time.perf_counter()
    model = build_model("patchcore", device=str(device), **_patchcore_kwargs(args))
    strategy = Strategy(model, regime, buffer_size=args.buffer, cache=FeatureCache())
    result = run(strategy, scenario, out / "runs", name=f"cl_iad-{regime}", metrics=["image_auroc"], wandb="off",
                 progress=False, overwrite=True, checkpoint=False, save_model=False)
    wall = time.perf_counter() - start
    matrix = result.matrices["image_auroc"]  # rows: after task i; columns: tasks
    diagonal = {name: float(matrix.iloc[i][name]) for i, name in enumerate(scenario.names)}
    return {"wall_s": wall, "peak_gpu_mb": _peak_mb(device), "diagonal_image_auroc": diagonal}


def anomalib_stream(args, scenario, device, out: Path) -> dict:
    """Engine fit + test of a fresh Patchcore per category, as anomalib users run the table."""
    from anomalib.callbacks.checkpoint import ModelCheckpoint
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine
    from anomalib.models import Patchcore

    from cl_iad.backbones import backbone_spec, load_into, resolve_state_dict

    spec = backbone_spec(args.backbone)
    state = resolve_state_dict(args.backbone, None)  # timm's cache: the weights cl_iad's side loads too
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    _peak_reset(device)
    aurocs, per_task = {}, {}
    start = time.perf_counter()
    for name in scenario.names:
        t0 = time.perf_counter()
        model = Patchcore(backbone=spec.timm_name, layers=args.layers.split(","), pre_trained=False,
                          coreset_sampling_ratio=0.1, num_neighbors=9, visualizer=False)
        if state is not None:
            load_into(model.model.feature_extractor.feature_extractor, state, args.backbone)
        datamodule = MVTecAD(root=scenario.root, category=name, num_workers=args.workers, train_batch_size=32,
                             eval_batch_size=32)
        root = out / "anomalib" / name
        engine = Engine(default_root_dir=root, logger=False, accelerator=accelerator, devices=1,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[ModelCheckpoint(dirpath=root / "ckpt", save_top_k=0, save_last=False)])
        engine.fit(model=model, datamodule=datamodule)
        (metrics,) = engine.test(model=model, datamodule=datamodule, verbose=False)
        aurocs[name] = float(metrics.get("image_AUROC", float("nan")))
        per_task[name] = round(time.perf_counter() - t0, 2)
    return {"wall_s": time.perf_counter() - start, "peak_gpu_mb": _peak_mb(device), "image_auroc": aurocs,
            "seconds_by_task": per_task}


def main(argv: list[str] | None = None) -> dict | None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cuda:N; cpu for a smoke run")
    parser.add_argument("--dataset", choices=["synthetic", "mvtec"], default="synthetic")
    parser.add_argument("--root", help="--dataset mvtec: the MVTec AD folder")
    parser.add_argument("--categories", help="comma-separated subset (default: all 15)")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--backbone", default="wide_resnet50_2")
    parser.add_argument("--layers", default="layer2,layer3")
    parser.add_argument("--buffer", type=int, default=20, help="replay buffer images")
    parser.add_argument("--workers", type=int, default=4, help="anomalib's dataloader workers")
    args = parser.parse_args(argv)
    setup_logging()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device on this machine; nothing measured (run it on a GPU machine, or pass "
              "--device cpu for a smoke run of the code)")
        return None
    if args.dataset == "mvtec" and not args.root:
        parser.error("--dataset mvtec needs --root (the MVTec AD folder)")
    out = work_dir("gpu")
    scenario = _scenario(args, out)
    anchor = anomalib_stream(args, scenario, device, out)
    replay = ours(args, scenario, "replay", device, out)
    naive = ours(args, scenario, "naive", device, out)
    diffs = {n: round(naive["diagonal_image_auroc"][n] - anchor["image_auroc"][n], 4) for n in scenario.names}
    figures = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dataset": args.dataset, "image_size": args.image_size, "backbone": args.backbone, "tasks": len(scenario),
        "train_images": sum(len(t.train) for t in scenario), "test_images": sum(len(t.test) for t in scenario),
        "anomalib_s": round(anchor["wall_s"], 1), "cl_iad_replay_s": round(replay["wall_s"], 1),
        "cl_iad_naive_s": round(naive["wall_s"], 1),
        "replay_over_anomalib": round(replay["wall_s"] / anchor["wall_s"], 3),
        "naive_over_anomalib": round(naive["wall_s"] / anchor["wall_s"], 3),
        "peak_gpu_mb_anomalib": anchor["peak_gpu_mb"], "peak_gpu_mb_replay": replay["peak_gpu_mb"],
        "peak_gpu_mb_naive": naive["peak_gpu_mb"],
        "image_auroc_anomalib": anchor["image_auroc"], "image_auroc_cl_iad_diagonal": naive["diagonal_image_auroc"],
        "image_auroc_diff": diffs, "max_abs_image_auroc_diff": max(abs(v) for v in diffs.values()),
        "anomalib_seconds_by_task": anchor["seconds_by_task"],
        "goal": "replay_over_anomalib <= 0.3 (cl_iad also evaluates T x T); max_abs_image_auroc_diff <= 0.01",
    }
    return emit("gpu_mvtec_scale", figures)


if __name__ == "__main__":
    main()
