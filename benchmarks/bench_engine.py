"""(b) One task through cl_iad vs the plain anomalib Engine fit + test, and the coreset alone.

Same data (a 40-image synthetic category in MVTec AD layout at 256 x 256, anomalib's
default size), same backbone and weights (EfficientNet-Lite0 ImageNet weights loaded into
anomalib's Lightning model built with pre_trained=False), same layers and coreset ratio.
The Engine runs with default fit + test, minus what only costs disk: no checkpoint files,
no logger, no visualizer images, no progress bar; data loading in the main process for both.

Goals: cl_iad / Engine <= 0.2 for PatchCore and <= 1.0 for PaDiM; our coreset >= 10x faster
than anomalib's KCenterGreedy on the 40,960 x 152 embedding, selecting the same indices.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import emit, setup_logging, timed, work_dir

CATEGORY = "screw"
LAYERS = {"patchcore": ["blocks.2", "blocks.4"], "padim": ["blocks.1", "blocks.2", "blocks.4"]}


def _data(out):
    from cl_iad.scenarios import synthetic

    return synthetic(out / "data", categories=[CATEGORY], image_size=256, n_train=40)


def _ours(name: str, scenario) -> float:
    from cl_iad.runner import evaluate
    from cl_iad.strategies import Strategy, build_model

    task = scenario[0]
    start = time.perf_counter()
    strategy = Strategy(build_model(name, layers=LAYERS[name]), "naive")
    strategy.fit_task(task, scenario)
    pred = strategy.predict(task.test, task_id=0)
    evaluate(pred, task.test.labels, task.test.masks(), ["image_auroc", "pixel_auroc", "pro"], task.name)
    return time.perf_counter() - start


def _engine(name: str, scenario, out) -> float:
    from anomalib.callbacks.checkpoint import ModelCheckpoint
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine
    from anomalib.models import Padim, Patchcore

    from cl_iad.backbones import load_into, resolve_state_dict

    start = time.perf_counter()
    common = {"backbone": "tf_efficientnet_lite0", "layers": LAYERS[name], "pre_trained": False, "visualizer": False}
    model = Patchcore(**common) if name == "patchcore" else Padim(**common, n_features=100)
    load_into(model.model.feature_extractor.feature_extractor, resolve_state_dict("efficientnet_lite0", None),
              "efficientnet_lite0")
    datamodule = MVTecAD(root=scenario.root, category=CATEGORY, num_workers=0, train_batch_size=16, eval_batch_size=16)
    root = out / f"engine-{name}"
    engine = Engine(default_root_dir=root, logger=False, accelerator="cpu", devices=1, enable_progress_bar=False,
                    enable_model_summary=False,
                    callbacks=[ModelCheckpoint(dirpath=root / "ckpt", save_top_k=0, save_last=False)])
    engine.fit(model=model, datamodule=datamodule)
    engine.test(model=model, datamodule=datamodule, verbose=False)
    return time.perf_counter() - start


def _coreset(scenario) -> dict:
    from anomalib.models.components.sampling import KCenterGreedy

    from cl_iad.cache import FeatureCache
    from cl_iad.models.ops.coreset import greedy_coreset_indices
    from cl_iad.strategies import build_model

    model = build_model("patchcore", layers=LAYERS["patchcore"])
    emb = model.module.reshape_embedding(FeatureCache().embeddings(model, scenario[0].train))
    rec: dict = {"coreset_rows": list(emb.shape)}
    with timed(rec, "coreset_s_anomalib"):
        torch.manual_seed(0)
        np.random.seed(0)
        ref = KCenterGreedy(emb, 0.1).select_coreset_idxs()
    with timed(rec, "coreset_s_ours_pruned"):
        pruned = greedy_coreset_indices(emb, 0.1, seed=0).tolist()
    with timed(rec, "coreset_s_ours_dense"):
        dense = greedy_coreset_indices(emb, 0.1, seed=0, method="dense").tolist()
    rec["coreset_same_indices"] = pruned == ref and dense == ref
    rec["coreset_speedup_pruned"] = round(rec["coreset_s_anomalib"] / rec["coreset_s_ours_pruned"], 1)
    rec["coreset_speedup_dense"] = round(rec["coreset_s_anomalib"] / rec["coreset_s_ours_dense"], 1)
    return rec


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="patchcore,padim")
    parser.add_argument("--skip-coreset", action="store_true")
    args = parser.parse_args(argv)
    setup_logging()
    out = work_dir("engine")
    scenario = _data(out)
    figures: dict = {"train_images": len(scenario[0].train), "test_images": len(scenario[0].test)}
    for name in args.models.split(","):
        _ours(name, scenario)  # warm-up: imports, weights and page cache for both sides
        engine = _engine(name, scenario, out)
        ours = _ours(name, scenario)
        figures.update({f"{name}_s_engine": round(engine, 2), f"{name}_s_cl_iad": round(ours, 2),
                        f"{name}_ratio": round(ours / engine, 3)})
    if not args.skip_coreset:
        figures.update(_coreset(scenario))
    figures["goal"] = "patchcore_ratio <= 0.2; padim_ratio <= 1.0; coreset_speedup >= 10 with same indices"
    return emit("engine_one_task", figures)


if __name__ == "__main__":
    main()
