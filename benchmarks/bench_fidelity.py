"""Fidelity: each model trained through cl_iad and through anomalib's own Engine, on the same data.

For every model, on one category in MVTec AD layout (default: ``tissue`` of the real-photo set that
``../shared/tools/make_photo_set.py`` writes; or ``--dataset synthetic``), at 128 px:

* **cl_iad**: :func:`cl_iad.runner.run` on a 1-task stream (``naive``) with the model's ``FIDELITY``
  setting below;
* **anomalib**: the model's Lightning module (``anomalib.models.<X>``) fitted and run by
  ``anomalib.engine.Engine`` with the ``MVTecAD`` datamodule on the same folder. Its torch model is a
  copy of ours *before* training (same architecture, same initial weights, the same ImageNet backbone
  weights from :mod:`cl_iad.backbones`); the pre-processor resizes to the same size and normalises
  as our backbone expects (models without a backbone keep anomalib's own pre-processor); same epochs
  and batch size; anomalib's ``training_step``, ``configure_optimizers`` and ``fit`` do the rest.
  No checkpoint files (``save_top_k=0``), no logger, no visualizer, no progress bar, no per-epoch
  validation (no model here stops early or thresholds); post-processing is off, so scores are raw.

Both sides' predictions are scored by cl_iad's metrics (exact AUROC, MVTec's PRO up to FPR 0.3),
so a difference is the models', not two metric implementations'. Architecture parity (our torch
model equals anomalib's) is pinned separately by ``tests/test_parity_frozen.py`` and
``tests/test_parity_gradient.py``; this script checks what training and data handling add.
RKDE has no anomalib 2 model (n/a); DSR needs its VQ-VAE weights (``--dsr-weights``).

Randomness: frozen-feature models see the training images in file order, with the global
generators seeded as ours seeds them right before anomalib's ``fit``, so PatchCore's coreset is
the same on both sides. Gradient-trained models keep anomalib's shuffled loader and seeding, so
their difference also holds batch-order noise; ``--seeds N`` runs both sides with seeds 0..N-1,
compares the means and prints each side's image-AUROC range and the standard error of the paired
differences, the scale on which to read a difference.

``--same-batches`` takes the noise out for gradient-trained models: Lightning trains anomalib's
module on our stream's images in the batch order our ``fit`` draws, with the global generator
(DRAEM's and DSR's simulated anomalies, flows' noise) seeded as ours at the start of training, and
DRAEM's and DSR's Perlin generators share our solarize threshold. What is left to differ is what each
side computes; the row also compares the per-step training losses. Its table is
``fidelity_same_batches.{csv,md}``. (Images: ``tests/test_parity_data.py`` pins our reader against
anomalib's ``MVTecAD``; at the photo set's own 128 px they are the same tensors.)

Goal: |cl_iad - anomalib| <= 0.02 for image AUROC, pixel AUROC and PRO, per model.

    python benchmarks/bench_fidelity.py --models patchcore,padim,dfm,dfkde,rkde,stfpm,fastflow --seeds 2
    python benchmarks/bench_fidelity.py --epochs-scale 0.25          # all 15, shorter training
    python benchmarks/bench_fidelity.py --models stfpm,draem --same-batches

Writes ``results/fidelity/fidelity.csv`` and ``fidelity.md`` (the 15-row table printed at the end).
Rows of earlier runs on the same data are kept, so the models can be run in several sittings (a
model run again replaces its row); ``--fresh`` starts a new table.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import inspect
import logging
import math
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from common import REPO, setup_logging, work_dir

log = logging.getLogger("bench.fidelity")

METRICS = ("image_auroc", "pixel_auroc", "pro")
GOAL = 0.02
PHOTO_TOOL = REPO.parent / "shared" / "tools" / "make_photo_set.py"
# anomalib 2.7's Lightning class for each model; RKDE has none (anomalib 2 dropped it).
ANOMALIB_CLASS = {"cfa": "Cfa", "cflow": "Cflow", "csflow": "Csflow", "dfkde": "Dfkde", "dfm": "Dfm",
                  "draem": "Draem", "dsr": "Dsr", "fastflow": "Fastflow", "ganomaly": "Ganomaly", "padim": "Padim",
                  "patchcore": "Patchcore", "reverse_distillation": "ReverseDistillation", "rkde": None,
                  "stfpm": "Stfpm", "uflow": "Uflow"}
# The fidelity setting: constructor arguments that train for real on a CPU at 128 px (40 training
# images). Frozen-feature models keep their defaults; DFM pools 2x2 so that its /16 stage keeps a
# 4x4 map at 128 px (anomalib's 4x4 pooling of a 16x16 map at 256 px gives the same 4x4).
# Gradient-trained models: anomalib's hyper-parameters with fewer epochs (and, where a full-width
# network is too slow for a CPU, a narrower one); `--epochs-scale` scales the epochs. Early
# stopping is off on both sides (patience 0), so both train exactly `epochs` epochs.
FIDELITY: dict[str, dict] = {
    "patchcore": {},
    "padim": {},
    "dfm": {"pooling_kernel_size": 2},
    "dfkde": {},
    "rkde": {},
    "stfpm": {"epochs": 40, "batch_size": 8},
    "ganomaly": {"epochs": 40, "batch_size": 8},
    "fastflow": {"epochs": 30, "batch_size": 8},
    "reverse_distillation": {"epochs": 30, "batch_size": 8, "patience": 0},
    "cfa": {"epochs": 15, "batch_size": 8, "patience": 0},
    "cflow": {"epochs": 4, "batch_size": 8},
    "csflow": {"epochs": 40, "batch_size": 8, "cross_conv_hidden_channels": 256, "patience": 0},
    "uflow": {"epochs": 30, "batch_size": 8},
    "draem": {"epochs": 60, "batch_size": 8, "recon_width": 32, "disc_width": 32},
    "dsr": {"epochs": 40, "batch_size": 8},
}
FROZEN = ("patchcore", "padim", "dfm", "dfkde", "rkde")


# -- data ------------------------------------------------------------------------------------
def dataset(kind: str, category: str, size: int, out: Path) -> Path:
    """Root of an MVTec AD-layout folder holding `category` at `size` px (written on first use)."""
    if kind == "photo":
        root = out / f"photo_{size}px"
        if not (root / category / "train").is_dir():
            if not PHOTO_TOOL.is_file():
                raise SystemExit(f"{PHOTO_TOOL} not found; pass --dataset synthetic or --photo-tool PATH")
            subprocess.run([sys.executable, str(PHOTO_TOOL), str(root), "--size", str(size)], check=True)
        return root
    from cl_iad.scenarios import synthetic

    scenario = synthetic(out / "synthetic", categories=[category], image_size=size, n_train=40, n_test_good=16,
                         n_test_per_defect=4)
    return scenario[0].train.samples[0].image_path.parents[3]


def setting(name: str, epochs_scale: float, dsr_weights: str | None) -> dict:
    """The model's fidelity constructor arguments, with the epochs scaled (at least 1)."""
    from cl_iad.models.registry import model_info

    args = dict(FIDELITY[name])
    if "patience" not in getattr(model_info(name).load(), "hp_defaults", {}):
        args.pop("patience", None)  # a checkout without early stopping trains every epoch anyway
    if "epochs" in args:
        args["epochs"] = max(1, round(args["epochs"] * epochs_scale))
    if name == "dsr":
        args["vq_weights"] = dsr_weights
    if name == "draem":
        # anomalib's Draem needs an anomaly-source folder (it downloads DTD otherwise): both sides
        # read the same textures, rendered by our synthetic generator
        from cl_iad.models.draem import render_texture_folder

        folder = render_texture_folder(work_dir("fidelity_data") / "draem_textures", n=40, size=128)
        args.update(anomaly_source="dtd", dtd_dir=str(folder))
    return args


def build(name: str, args: dict):
    from cl_iad.models.registry import build_model

    return build_model(name, **{"device": "cpu", "seed": 0, **args})


# -- the two sides ----------------------------------------------------------------------------
def run_ours(name: str, args: dict, root: Path, category: str, size: int, out: Path) -> dict[str, float]:
    """Metrics of cl_iad's loop on the 1-task stream of `category` (``args["seed"]``, default 0)."""
    from cl_iad.runner import run
    from cl_iad.scenarios import from_folder
    from cl_iad.strategies import Strategy

    scenario = from_folder(root, [category], image_size=size, dataset="fidelity")
    seed = args.get("seed", 0)
    strategy = Strategy(build(name, args), "naive", seed=seed)
    result = run(strategy, scenario, out / "cl_iad", name=f"{name}-seed{seed}", metrics=list(METRICS),
                 wandb="off", progress=False, overwrite=True, checkpoint=False, save_model=False)
    metrics = {m: float(result.matrices[m].to_numpy()[0, 0]) for m in METRICS}
    return {**metrics, "losses": list(getattr(strategy.model, "losses_", {}).get(0, [])),
            "epochs_run": getattr(strategy.model, "epochs_run_", {}).get(0)}


def _pre_processor(model, name: str, size: int):
    """Resize to `size`, then our backbone's normalisation; anomalib's own for models without a backbone."""
    import anomalib.models as am
    from anomalib.pre_processing import PreProcessor
    from torchvision.transforms.v2 import Compose, Normalize, Resize

    if getattr(model, "uses_backbone", True):
        mean, std = model._mean.flatten().tolist(), model._std.flatten().tolist()
        return PreProcessor(transform=Compose([Resize((size, size), antialias=True), Normalize(mean, std)]))
    return getattr(am, ANOMALIB_CLASS[name]).configure_pre_processor((size, size))


def lightning_module(name: str, ours, size: int, evaluator=False):
    """anomalib's Lightning module for `name`, holding a copy of our untrained torch model."""
    import anomalib.models as am

    from cl_iad.backbones import backbone_spec
    from cl_iad.models.offline import no_downloads

    cls = getattr(am, ANOMALIB_CLASS[name])
    accepted = inspect.signature(cls.__init__).parameters
    kwargs: dict = {"pre_processor": _pre_processor(ours, name, size), "post_processor": False,
                    "evaluator": evaluator, "visualizer": False}
    # hyper-parameters read by the Lightning module itself (optimisers, coreset, fibre batches)
    hp = {**getattr(ours, "hp", {}), "lr": getattr(ours, "lr", None), "batch_size": getattr(ours, "batch_size", None),
          "coreset_sampling_ratio": getattr(ours, "coreset_ratio", None)}
    kwargs.update({k: v for k, v in hp.items() if k in accepted and v is not None})
    if getattr(ours, "layers", None) and "backbone" in accepted:
        kwargs["backbone"] = backbone_spec(ours.backbone).timm_name
    if getattr(ours, "layers", None) and "layers" in accepted:
        kwargs["layers"] = list(ours.layers)
    if "layer" in accepted:
        kwargs["layer"] = ours.layers[0]
    if "pre_trained" in accepted:
        kwargs["pre_trained"] = False
    if name == "padim":
        kwargs["n_features"] = ours.n_features
    if name in FROZEN:
        with no_downloads():
            module = cls(**kwargs)
        # Lightning keeps each submodule's train/eval mode through fit, so the copy takes the modes
        # anomalib's own construction gives (frozen extractors in eval, the rest in train); ours
        # puts the whole module in eval.
        modes = {n: m.training for n, m in module.model.named_modules()}
        module.model = copy.deepcopy(ours.module)  # same architecture and initial weights as ours
        for n, m in module.model.named_modules():
            m.training = modes.get(n, True)
    else:
        # The Lightning module builds a copy of our freshly built torch model instead of its own:
        # CFA's and CS-Flow's own constructors download torchvision weights, and the copy gives
        # both sides the same initial weights (the parity tests pin that ours is anomalib's model).
        namespace = sys.modules[cls.__module__]
        torch_models = [n for n, v in vars(namespace).items()
                        if isinstance(v, type) and issubclass(v, torch.nn.Module) and v.__module__.endswith("torch_model")]
        with contextlib.ExitStack() as stack:
            for attr in torch_models:
                stack.enter_context(mock.patch.object(namespace, attr, lambda *a, **k: copy.deepcopy(ours.module)))
            stack.enter_context(no_downloads())
            module = cls(**kwargs)
    if name == "cfa":
        # anomalib's get_scale only sizes the k-means of gamma_c > 1 (which ours refuses); its dry run
        # looks up torchvision's layer names ("layer1"...), which a timm backbone's features lack
        module.model.get_scale = lambda input_size: torch.Size(input_size)
    if name == "dsr":
        weights = Path(ours.hp["vq_weights"])
        module.prepare_pretrained_model = lambda: weights  # anomalib would download them
    return module


def _our_batches(datamodule, ours, root: Path, category: str, size: int) -> None:
    """Make `datamodule` hand Lightning the training batches our ``fit`` draws, in the same order.

    The training images are our 1-task stream's (cl_iad's loader). Their order is replayed from a
    loader built as ``GradientModel.fit`` builds it (shuffled by a generator seeded with
    seed * 1000 + task 0, iterated once per epoch), and Lightning's loader draws batches from that
    replay. A plain seeded loader would not do: Lightning calls ``iter()`` on it an extra time
    while setting up, which moves its generator, so from the second epoch on its order differs.
    Lightning's own ``train_dataloader()`` call, for training, gets the replay; the modules' calls
    (CFA's centroid pass in ``on_train_start``, DSR's length in ``configure_optimizers``, which
    comes before Lightning's) get the images in file order, as our ``begin_task`` reads them.
    """
    import itertools

    from anomalib.data import ImageBatch
    from torch.utils.data import DataLoader, Sampler

    from cl_iad.scenarios import from_folder

    train = from_folder(root, [category], image_size=size, dataset="fidelity")[0].train
    seed = ours.seed * 1000
    train, _ = ours.held_out_split(train, seed)
    order = DataLoader(range(len(train)), batch_size=ours.batch_size, shuffle=True,
                       generator=torch.Generator().manual_seed(seed))
    epochs = [[b.tolist() for b in order] for _ in range(ours.epochs)]

    class Replay(Sampler):
        """Each pass yields the next epoch's batches, drawn lazily (an unused ``iter()`` takes none)."""

        def __init__(self) -> None:
            self.stream = itertools.chain.from_iterable(epochs)

        def __len__(self) -> int:
            return len(epochs[0])

        def __iter__(self):
            for _ in range(len(self)):
                yield next(self.stream)

    def collate(items: list[dict]):
        return ImageBatch(image=torch.stack([i["image"] for i in items]),
                          gt_label=torch.tensor([i["gt_label"] for i in items]))

    def train_dataloader() -> DataLoader:
        if _called_by_lightnings_data_connector():
            # its own generator: each iter() draws a base seed, which must not move the global one
            return DataLoader(train, batch_sampler=Replay(), collate_fn=collate, generator=torch.Generator())
        return DataLoader(train, batch_size=ours.batch_size, shuffle=False, collate_fn=collate)

    datamodule.train_dataloader = train_dataloader


def _called_by_lightnings_data_connector() -> bool:
    """Whether Lightning's trainer (not a module hook) is asking for the training loader."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "_request_dataloader" and "lightning" in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False


def _steps_callback(seed: int | None):
    """A Lightning callback that seeds the global generator at the start of training as our
    ``fit`` does (seed * 1000 + task 0; `seed` None: no seeding) and records each step's loss."""
    from lightning.pytorch import Callback

    class Steps(Callback):
        def __init__(self) -> None:
            self.losses: list[float] = []

        def on_train_start(self, trainer, pl_module) -> None:
            if seed is not None:
                torch.manual_seed(seed * 1000)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if isinstance(outputs, dict):
                loss = outputs.get("loss", outputs.get("generator_loss"))
                if loss is not None:
                    self.losses.append(float(loss))

    return Steps()


def share_solarize(mine, theirs) -> None:
    """Give anomalib's PerlinAnomalyGenerator `theirs` the RandomSolarize threshold of `mine`.

    The generator draws that threshold once, when built, from whatever state the global generator
    is in; ours draws it from the model's seed. Like the initial weights, both sides must share it,
    or every run has a different anomaly simulator (DRAEM, DSR)."""
    from torchvision.transforms import v2

    found = [[t for t in g.augmenters.transforms if isinstance(t, v2.RandomSolarize)] for g in (mine, theirs)]
    if not (len(found[0]) == len(found[1]) == 1):
        raise RuntimeError(f"expected one RandomSolarize in each Perlin generator, found {[len(f) for f in found]}")
    found[1][0].threshold = found[0][0].threshold


def _same_solarize(ours, module) -> None:
    """:func:`share_solarize` for the models that hold a Perlin generator (ours' attribute, anomalib's)."""
    pairs = {"draem": ("_augmenter", "augmenter"), "dsr": ("_perlin", "perlin_generator")}
    if ours.name in pairs:
        share_solarize(getattr(ours, pairs[ours.name][0]), getattr(module, pairs[ours.name][1]))


def run_anomalib(name: str, args: dict, root: Path, category: str, size: int, out: Path,
                 same_batches: bool = False, stop_on_test: int = 0) -> dict[str, float]:
    """Metrics of anomalib's Engine fit + predict on the same folder, scored by cl_iad's metrics.

    With `same_batches` (gradient-trained models), Lightning trains on our stream's images in our
    ``fit``'s batch order, with the global generator seeded as ours at the start of training, so
    the two runs differ only in what each side's training code computes. Returns the per-step
    losses too (``losses``), and the epochs trained (``epochs_run``).

    With `stop_on_test` = P > 0, anomalib's published protocol for CFA, CS-Flow and Reverse
    Distillation (anomalib 0.x configs): validate every epoch on the test set
    (``val_split_mode="same_as_test"``) and stop when its pixel AUROC has not risen for P epochs
    (Lightning's ``EarlyStopping``, mode max).
    """
    from anomalib.callbacks.checkpoint import ModelCheckpoint
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything
    from torch.utils.data import DataLoader

    from cl_iad.runner import METRIC_FUNCTIONS
    from cl_iad.strategies.base import Predictions

    ours = build(name, args)
    if hasattr(ours, "setup"):
        ours.setup(size)  # gradient-trained: build the module as our fit would
    callbacks: list = []
    evaluator = False
    if stop_on_test:
        from anomalib.metrics import AUROC, Evaluator
        from lightning.pytorch.callbacks import EarlyStopping

        evaluator = Evaluator(val_metrics=[AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_")], test_metrics=[])
        callbacks.append(EarlyStopping(monitor="pixel_AUROC", patience=stop_on_test, mode="max"))
    module = lightning_module(name, ours, size, evaluator)
    batch = getattr(ours, "batch_size", 16)
    datamodule = MVTecAD(root=root, category=category, train_batch_size=batch, eval_batch_size=batch, num_workers=0,
                         **({"val_split_mode": "same_as_test"} if stop_on_test else {}))
    epochs = getattr(ours, "epochs", 1)
    _same_solarize(ours, module)
    steps = _steps_callback(ours.seed if same_batches and name not in FROZEN else None)
    engine = Engine(default_root_dir=out / "anomalib", logger=False, accelerator="cpu", devices=1, max_epochs=epochs,
                    enable_progress_bar=False, enable_model_summary=False,
                    **({"num_sanity_val_steps": 0} if stop_on_test else {"limit_val_batches": 0}),
                    callbacks=[ModelCheckpoint(dirpath=out / "anomalib" / "ckpt", save_top_k=0, save_last=False),
                               steps, *callbacks])
    seed_everything(ours.seed, workers=True)
    if name in FROZEN:
        # Same randomness as ours: the images in file order (our feature cache's order) and the
        # global generators seeded right before the fit, as our coreset and KDE subsample seed them.
        # Otherwise PatchCore's coreset start differs, which alone moves its image AUROC by up to
        # 0.06 on the photo set (seeds 0-3 of ours: 0.883-0.945).
        fit = module.fit

        def seeded_fit() -> None:
            torch.manual_seed(ours.seed)
            np.random.seed(ours.seed)
            fit()

        module.fit = seeded_fit
        datamodule.setup()
        train = DataLoader(datamodule.train_data, batch_size=batch, shuffle=False,
                           collate_fn=datamodule.train_data.collate_fn)
        engine.fit(model=module, train_dataloaders=train)
    else:
        if same_batches:
            _our_batches(datamodule, ours, root, category, size)
        engine.fit(model=module, datamodule=datamodule)
    datamodule.setup()
    batches = engine.predict(model=module, dataloaders=datamodule.test_dataloader(), return_predictions=True)
    scores = torch.cat([b.pred_score.reshape(-1) for b in batches]).float().numpy()
    has_maps = all(b.anomaly_map is not None for b in batches)
    maps = torch.cat([b.anomaly_map.reshape(len(b.pred_score), size, size) for b in batches]).float().numpy() \
        if has_maps else None
    labels = torch.cat([b.gt_label.reshape(-1) for b in batches]).numpy().astype(np.int64)
    masks = torch.cat([b.gt_mask.reshape(-1, size, size) for b in batches]).numpy().astype(bool)
    pred = Predictions(scores.astype(np.float64), maps)
    return {**{m: float(METRIC_FUNCTIONS[m](pred, labels, masks)) for m in METRICS}, "losses": steps.losses,
            "epochs_run": engine.trainer.current_epoch}


# -- the table ---------------------------------------------------------------------------------
def _fmt(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    text = f"{v:.3f}"
    return "0.000" if text == "-0.000" else text


def _text(v, fmt: str = "{}") -> str:
    """A table cell: "-" for a missing or NaN value (rows read back from the CSV hold NaN)."""
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def _diff(row: dict, m: str) -> str:
    """The difference, with the standard error over paired seeds where there are several."""
    d, se = _fmt(row.get(f"{m}_diff")), row.get(f"{m}_diff_se")
    return d if se is None or (isinstance(se, float) and math.isnan(se)) else f"{d} ± {se:.3f}"


def table(rows: list[dict]) -> str:
    """Markdown: per model, each metric for cl_iad, anomalib and their difference, and the verdict."""
    head = ["model", "epochs", "batches"] + \
        [f"{m} {side}" for m in METRICS for side in ("cl_iad", "anomalib", "diff")] + \
        ["within 0.02", "seeds", "image_auroc range cl_iad", "image_auroc range anomalib",
         "training loss, relative difference", "minutes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], _text(r.get("epochs"), "{:.0f}"), _text(r.get("batches"))]
        for m in METRICS:
            cells += [_fmt(r.get(f"{m}_cl_iad")), _fmt(r.get(f"{m}_anomalib")), _diff(r, m)]
        cells += [_text(r.get("verdict")), _text(r.get("seeds"), "{:.0f}"), _text(r.get("image_auroc_range_cl_iad")),
                  _text(r.get("image_auroc_range_anomalib")),
                  _text(r.get("loss_curves") if r.get("batches") == "same" else None),
                  _text(r.get("minutes"), "{:.1f}")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(row: dict) -> str:
    """"yes" when every difference is within the goal; a miss says whether it is within two standard
    errors of zero over paired seeds (seed noise) or not."""
    diffs = {m: row.get(f"{m}_diff") for m in METRICS}
    diffs = {m: d for m, d in diffs.items() if d is not None and not math.isnan(d)}
    if not diffs:
        return "n/a"
    misses = {m: d for m, d in diffs.items() if abs(d) > GOAL}
    if not misses:
        return "yes"
    ses = [row.get(f"{m}_diff_se") for m in misses]
    if all(se is not None and not math.isnan(se) and abs(d) <= 2 * se for d, se in zip(misses.values(), ses, strict=True)):
        return "NO, within 2 SE of 0"
    return "NO"


def one_model(name: str, args: dict, root: Path, category: str, size: int, out: Path, note: str | None,
              seeds: int = 1, same_batches: bool = False, seed_start: int = 0) -> dict:
    """One table row: each metric's mean over seeds `seed_start`.. (`seeds` of them) for both sides,
    and their difference (see :func:`summarise`). With `same_batches` the row also compares the two
    sides' per-step training losses."""
    row: dict = {"model": name, "epochs": args.get("epochs", 1),
                 "batches": "same" if same_batches and name not in FROZEN else "each side's own"}
    start = time.perf_counter()
    seed_list = list(range(seed_start, seed_start + seeds))
    ours = [run_ours(name, {**args, "seed": s}, root, category, size, out / name) for s in seed_list]
    theirs = [] if note else [run_anomalib(name, {**args, "seed": s}, root, category, size, out / name, same_batches)
                              for s in seed_list]
    row["seed_list"] = ";".join(map(str, seed_list))
    summarise(row, ours, theirs)
    if same_batches and theirs and all(o["losses"] for o in ours):  # other batches: the curves differ anyway
        row["loss_curves"] = loss_agreement([o["losses"] for o in ours], [t["losses"] for t in theirs])
    row["verdict"] = note or verdict(row)
    row["minutes"] = (time.perf_counter() - start) / 60
    log.info("%s: %s", name, {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
    return row


def summarise(row: dict, ours: list[dict], theirs: list[dict]) -> dict:
    """Fill `row` from per-seed metrics: each side's mean, the difference of means, the per-seed values
    and, with several seeds, each side's image-AUROC range and per metric the standard error of
    the mean difference. Both sides run each seed from the same initial weights, so the
    differences are paired: a difference of a few standard errors is seed noise (batch order,
    coreset start), not a different model."""
    row["seeds"] = len(ours)
    for m in METRICS:
        row[f"{m}_cl_iad"] = float(np.mean([o[m] for o in ours]))
        row[f"{m}_anomalib"] = float(np.mean([t[m] for t in theirs])) if theirs else float("nan")
        row[f"{m}_diff"] = row[f"{m}_cl_iad"] - row[f"{m}_anomalib"]
        row[f"{m}_per_seed_cl_iad"] = ";".join(f"{o[m]:.6f}" for o in ours)
        row[f"{m}_per_seed_anomalib"] = ";".join(f"{t[m]:.6f}" for t in theirs)
        row.pop(f"{m}_diff_se", None)
        if len(ours) > 1 and theirs:
            paired = np.array([o[m] - t[m] for o, t in zip(ours, theirs, strict=True)])
            row[f"{m}_diff_se"] = float(paired.std(ddof=1) / math.sqrt(len(paired)))
    if len(ours) > 1:
        for side, results in (("cl_iad", ours), ("anomalib", theirs)):
            aurocs = [r["image_auroc"] for r in results]
            row[f"image_auroc_range_{side}"] = f"{min(aurocs):.3f}-{max(aurocs):.3f}" if aurocs else None
    return row


def _per_seed(row: dict, side: str) -> list[dict]:
    """The per-seed metrics of one side of a row (as read back from a CSV); a metric the model has
    no output for (GANomaly's maps) is NaN on every seed."""
    columns = {m: str(row.get(f"{m}_per_seed_{side}", "")) for m in METRICS}
    values = {m: [float(v) for v in c.split(";")] for m, c in columns.items() if c not in ("", "nan", "None")}
    if not values:
        return []
    n = len(next(iter(values.values())))
    return [{m: values[m][i] if m in values else float("nan") for m in METRICS} for i in range(n)]


def pool(a: dict, b: dict) -> dict:
    """One row from two runs of the same model on other seeds (same epochs and batches), or `b`
    where they cannot be pooled (a rerun of the same seeds, another setting: the later run wins)."""
    seeds_a, seeds_b = (str(r.get("seed_list", "")).split(";") for r in (a, b))
    same_setting = all(str(a.get(k)) == str(b.get(k)) for k in ("epochs", "batches", "epochs_scale"))
    if not same_setting or "" in seeds_a + seeds_b or "nan" in seeds_a + seeds_b or set(seeds_a) & set(seeds_b):
        return b
    ours, theirs = _per_seed(a, "cl_iad") + _per_seed(b, "cl_iad"), _per_seed(a, "anomalib") + _per_seed(b, "anomalib")
    if not ours or (theirs and len(theirs) != len(ours)):
        return b
    row = summarise({**a, "seed_list": ";".join(seeds_a + seeds_b)}, ours, theirs)
    curves = [str(r.get("loss_curves")) for r in (a, b) if r.get("loss_curves") not in (None, "") and
              not (isinstance(r.get("loss_curves"), float) and math.isnan(r["loss_curves"]))]
    row["loss_curves"] = " | ".join(curves) if curves else None
    row["minutes"] = float(a.get("minutes", 0)) + float(b.get("minutes", 0))
    note = str(a.get("verdict", ""))
    row["verdict"] = note if note.startswith("n/a") else verdict(row)
    return row


def loss_agreement(ours: list[list[float]], theirs: list[list[float]]) -> str:
    """How closely the two sides' per-step training losses agree over all seeds: the largest
    difference relative to our loss at the first step and over all steps (or the step counts,
    where they differ)."""
    first, worst, steps = 0.0, 0.0, 0
    for a, b in zip(ours, theirs, strict=True):
        if len(a) != len(b):
            return f"{len(a)} vs {len(b)} steps"
        rel = np.abs(np.array(a) - np.array(b)) / np.maximum(np.abs(np.array(a)), 1e-12)
        first, worst, steps = max(first, float(rel[0])), max(worst, float(rel.max())), steps + len(a)
    return f"step 1: {first:.1e}; all {steps} steps: {worst:.1e}"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(FIDELITY), help="comma-separated model names (default: all 15)")
    parser.add_argument("--epochs-scale", type=float, default=1.0, help="multiply every gradient model's epochs")
    parser.add_argument("--dataset", choices=("photo", "synthetic"), default="photo")
    parser.add_argument("--category", default=None, help="default: tissue (photo) or screw (synthetic)")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--dsr-weights", default=None, help="DSR's VQ-VAE weights file (without it DSR is n/a)")
    parser.add_argument("--seeds", type=int, default=1,
                        help="run both sides with N seeds (from --seed-start, default 0): means, each side's image AUROC range, paired SE")
    parser.add_argument("--seed-start", type=int, default=0,
                        help="first seed (runs seeds S..S+N-1); --merge pools runs of one model on other seeds")
    parser.add_argument("--same-batches", action="store_true",
                        help="gradient-trained models: anomalib's Lightning loop trains on our batches in our order, "
                             "with the global generator seeded as ours (table: fidelity_same_batches.*)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "fidelity")
    parser.add_argument("--fresh", action="store_true",
                        help="start a new table (default: keep the rows of models not rerun, same data only)")
    parser.add_argument("--merge", type=Path, nargs="+", metavar="DIR",
                        help="run nothing: put the rows of other --out folders (runs split over processes or "
                             "machines, same data) into this table; runs of one model on other seeds (--seed-start) "
                             "are pooled, otherwise a model's row from a later folder wins")
    args = parser.parse_args(argv)
    setup_logging()
    logging.getLogger("bench").setLevel(logging.INFO)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in FIDELITY]
    if unknown:
        raise SystemExit(f"unknown models {unknown}; choose from {', '.join(FIDELITY)}")
    category = args.category or ("tissue" if args.dataset == "photo" else "screw")
    args.out.mkdir(parents=True, exist_ok=True)
    root = dataset(args.dataset, category, args.image_size, work_dir("fidelity_data"))
    data = {"dataset": args.dataset, "category": category, "image_size": args.image_size}
    stem = "fidelity_same_batches" if args.same_batches else "fidelity"
    rows = {} if args.fresh else _previous(args.out / f"{stem}.csv", data)
    if args.merge:
        for folder in args.merge:
            for name, row in _previous(folder / f"{stem}.csv", data).items():
                rows[name] = pool(rows[name], row) if name in rows else row
        text = _write(rows, args.out, data, stem)
        print(text, flush=True)
        return [rows[n] for n in FIDELITY if n in rows]
    for name in names:
        if name == "dsr" and not args.dsr_weights:
            rows[name] = {"model": name, **data, "verdict": "n/a (needs --dsr-weights)", "minutes": 0.0}
            continue
        note = "n/a (no anomalib 2 model)" if ANOMALIB_CLASS[name] is None else None
        row = one_model(name, setting(name, args.epochs_scale, args.dsr_weights), root, category, args.image_size,
                        work_dir("fidelity_runs"), note, args.seeds, args.same_batches, args.seed_start)
        rows[name] = {**row, **data, "epochs_scale": args.epochs_scale}
        _write(rows, args.out, data, stem)
    text = _write(rows, args.out, data, stem)
    print(text, flush=True)
    return [rows[n] for n in FIDELITY if n in rows]


def _previous(csv: Path, data: dict) -> dict[str, dict]:
    """Rows of earlier runs on the same data (a model run now replaces its row), so runs can be split."""
    import pandas as pd

    if not csv.is_file():
        return {}
    old = pd.read_csv(csv, keep_default_na=True)
    same = (old[list(data)].astype(str) == pd.Series({k: str(v) for k, v in data.items()})).all(axis=1) \
        if set(data) <= set(old.columns) else old.index < 0
    return {r["model"]: r for r in old[same].to_dict("records")}


def _write(rows: dict[str, dict], out: Path, data: dict, stem: str = "fidelity") -> str:
    """The 15-row table (models not run yet: "not run") as Markdown and CSV under `out`."""
    import pandas as pd

    for row in rows.values():  # rows read back from an older table get today's verdict rule
        if not str(row.get("verdict", "")).startswith(("n/a", "not run")):
            row["verdict"] = verdict(row)
    ordered = [rows.get(n, {"model": n, "verdict": "not run"}) for n in FIDELITY]
    header = (f"Fidelity at {data['image_size']} px on {data['dataset']}/{data['category']} "
              f"(diff = cl_iad - anomalib; goal |diff| <= {GOAL}; epochs as run, see the epochs column)")
    text = header + "\n\n" + table(ordered) + "\n"
    pd.DataFrame([rows[n] for n in FIDELITY if n in rows]).to_csv(out / f"{stem}.csv", index=False)
    (out / f"{stem}.md").write_text(text, encoding="utf-8")
    return text


if __name__ == "__main__":
    main()
