"""The streaming classes as torchmetrics Metrics: update/forward/compute/reset, MetricCollection,
anomalib's wrapper, float64 states, and sync across (simulated) processes, against sklearn."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score
from torchmetrics import Metric, MetricCollection

from cl_iad import metrics as M


def _maps(seed: int, n: int = 6, size: int = 16, decimals: int | None = None):
    """Maps (float32) and 0/1 masks; image 0 is normal, the others hold one rectangle."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=np.uint8)
    for i in range(1, n):
        r, c = rng.integers(0, size - 4, 2)
        masks[i, r : r + rng.integers(1, 5), c : c + rng.integers(1, 5)] = 1
    maps = (rng.random((n, size, size)) + 0.4 * masks).astype(np.float32)
    if decimals is not None:
        maps = np.round(maps, decimals)
    return maps, masks


# each class and its reference on the same inputs: sklearn, or the functional pro_score
CASES = {
    "image_auroc": (M.ImageAUROC, lambda s, y: roc_auc_score(y, s)),
    "image_aupr": (M.ImageAUPR, lambda s, y: average_precision_score(y, s)),
    "pixel_auroc": (M.PixelAUROC, lambda m, g: roc_auc_score(g.ravel(), m.ravel())),
    "pixel_aupr": (M.PixelAUPR, lambda m, g: average_precision_score(g.ravel(), m.ravel())),
    "pro": (M.PRO, M.pro_score),
}


def _case(name: str, seed: int = 0, n: int = 12):
    """The class, its inputs (x, y) for n images (ties when seed is odd) and its reference."""
    cls, reference = CASES[name]
    decimals = 2 if seed % 2 else None
    if name.startswith("pixel") or name == "pro":
        return cls, _maps(seed, n=n, decimals=decimals), reference
    y = np.arange(n) % 2  # both classes in every slice of 3 or more images
    s = np.random.default_rng(seed).random(n) + 0.3 * y
    return cls, (s if decimals is None else np.round(s, 1), y), reference


@pytest.mark.parametrize("name", CASES)
def test_every_class_is_a_torchmetrics_metric_with_a_cat_state(name):
    metric = CASES[name][0]()
    assert isinstance(metric, Metric)
    assert metric._reductions["score_bins"].__name__ == "dim_zero_cat"  # torchmetrics' "cat"
    assert metric.full_state_update is False and metric.higher_is_better is True


@pytest.mark.parametrize("name", CASES)
def test_forward_returns_the_batch_value_and_accumulates_like_update(name):
    cls, (x, y), reference = _case(name, seed=1)
    metric = cls()
    for sl in (slice(0, 6), slice(6, 12)):
        batch_value = metric(x[sl], y[sl])
        assert batch_value.dtype == torch.float64
        assert float(batch_value) == pytest.approx(reference(x[sl], y[sl]), abs=1e-12)
    assert metric.update_count == 2
    assert float(metric.compute()) == pytest.approx(reference(x, y), abs=1e-12)
    metric.reset()
    assert metric.update_count == 0 and metric.n_bins == 0
    metric.update(x, y)
    assert float(metric.compute()) == pytest.approx(reference(x, y), abs=1e-12)


def test_metric_collection_updates_forwards_and_computes_every_pixel_metric():
    maps, masks = _maps(2, n=12)
    coll = MetricCollection({"pixel_auroc": M.PixelAUROC(), "pixel_aupr": M.PixelAUPR(), "pro": M.PRO()})
    coll.update(torch.from_numpy(maps[:4]), torch.from_numpy(masks[:4]))  # the first update forms compute groups
    coll.update(torch.from_numpy(maps[4:8]), torch.from_numpy(masks[4:8]))
    step = coll(torch.from_numpy(maps[8:]), torch.from_numpy(masks[8:]))
    assert float(step["pro"]) == pytest.approx(M.pro_score(maps[8:], masks[8:]), abs=1e-12)
    out = coll.compute()
    assert set(out) == {"pixel_auroc", "pixel_aupr", "pro"}
    assert float(out["pixel_auroc"]) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    assert float(out["pixel_aupr"]) == pytest.approx(average_precision_score(masks.ravel(), maps.ravel()), abs=1e-12)
    assert float(out["pro"]) == pytest.approx(M.pro_score(maps, masks), abs=1e-12)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_merge_state_of_two_halves_equals_one_metric_on_all_data_and_sklearn(name, seed):
    cls, (x, y), reference = _case(name, seed)
    first, second, whole = cls(), cls(), cls()
    first.update(x[:5], y[:5])
    second.update(x[5:], y[5:])
    whole.update(x, y)
    first.merge_state(second)
    assert float(first.compute()) == pytest.approx(float(whole.compute()), abs=1e-15)
    assert float(first.compute()) == pytest.approx(reference(x, y), abs=1e-12)
    assert first.bounds()[0] == first.bounds()[1]


def test_empty_states_merge_and_an_empty_batch_changes_nothing():
    metric = M.PRO()
    metric.merge_state(M.PRO())
    with pytest.warns(M.UndefinedMetricWarning):
        assert torch.isnan(metric(np.zeros((0, 8, 8)), np.zeros((0, 8, 8))))
    assert metric.n_bins == 0 and int(metric.n_regions) == 0


def _simulated_sync_compute(metrics: list[Metric]) -> tuple[list[tuple], list[list[torch.Tensor]]]:
    """Each metric's compute() and bounds() after torchmetrics' own sync across len(metrics) simulated
    processes, and what each process handed to all_gather: a first pass records that, a second
    replays the gathers (twice: compute and bounds each sync)."""
    sent = []
    for metric in metrics:
        calls: list[torch.Tensor] = []
        metric.sync(dist_sync_fn=lambda t, group=None, calls=calls: calls.append(t.clone()) or [t],
                    distributed_available=lambda: True)
        metric.unsync()
        sent.append(calls)
    values = []
    for metric in metrics:
        gathers = iter(list(zip(*sent, strict=True)) * 2)
        metric.dist_sync_fn = lambda t, group=None, gathers=gathers: list(next(gathers))
        metric.distributed_available_fn = lambda: True
        values.append((metric.compute(), metric.bounds()))
    return values, sent


@pytest.mark.parametrize("name", CASES)
def test_cat_sync_across_processes_equals_one_process_on_the_union(name):
    cls, (x, y), reference = _case(name, seed=3)
    ranks = [cls(), cls(), cls()]
    ranks[0].update(x[:4], y[:4])
    ranks[0].update(x[4:7], y[4:7])
    ranks[1].update(x[7:], y[7:])  # rank 2 saw no data: it must still send (0, C) float64 rows
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*before the ``update``")
        values, sent = _simulated_sync_compute(ranks)
    # a real all_gather needs every process to send the same dtype and number of dimensions
    n_cols = 5 if name == "pro" else 4
    assert {(calls[0].dtype, calls[0].ndim, calls[0].shape[1]) for calls in sent} == {(torch.float64, 2, n_cols)}
    expected = reference(x, y)
    for value, (lo, hi) in values:
        assert float(value) == pytest.approx(expected, abs=1e-12)
        assert lo == hi == float(value)
    local = cls()
    local.update(x[7:], y[7:])
    assert not ranks[1]._is_synced and ranks[1].n_bins == local.n_bins  # each keeps its own state after


@pytest.mark.parametrize("name", ["pixel_auroc", "pro"])
def test_states_stay_float64_whatever_set_dtype_or_to_dtype_ask(name):
    # scores 1e-12 apart: float32 (let alone float16) would tie them all and give 0.5
    rng = np.random.default_rng(0)
    _, masks = _maps(4, n=6)
    maps = 0.5 + 1e-9 * (rng.random(masks.shape) + 0.5 * masks)
    cls, reference = CASES[name]
    metric = cls()
    metric.update(maps[:3], masks[:3])
    metric.set_dtype(torch.float16)
    metric.update(maps[3:], masks[3:])
    metric.to(torch.bfloat16)
    metric.half()
    states = [s for v in metric.metric_state.values() for s in (v if isinstance(v, list) else [v])]
    assert all(s.dtype in (torch.float64, torch.int64) for s in states)
    assert float(metric.compute()) == pytest.approx(reference(maps, masks), abs=1e-12)
    assert abs(float(metric.compute()) - 0.5) > 0.1


@pytest.mark.parametrize("name", ["pixel_auroc", "pixel_aupr", "pro"])
def test_forward_only_loop_keeps_memory_bounded_and_bounds_hold(name):
    cls, (x, y), _ = _case(name, seed=5)
    x, y = np.concatenate([x, x[::-1] + 0.01]), np.concatenate([y, y[::-1]])
    metric = cls(max_bins=64)
    for i in range(len(x)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", M.UndefinedMetricWarning)  # image 0 has no anomalous pixel
            metric(x[i : i + 1], y[i : i + 1])
        assert metric.n_bins <= 64
    exact = {"pixel_auroc": M.pixel_auroc, "pixel_aupr": M.pixel_aupr, "pro": M.pro_score}[name](x, y)
    lo, hi = metric.bounds()
    assert not metric.exact
    assert lo - 1e-12 <= exact <= hi + 1e-12


def test_anomalib_wraps_the_classes_and_reads_batch_fields():
    from anomalib.metrics import create_anomalib_metric

    maps, masks = _maps(6, n=8)
    batch = SimpleNamespace(anomaly_map=torch.from_numpy(maps), gt_mask=torch.from_numpy(masks).bool())
    pro = create_anomalib_metric(M.PRO)(fields=("anomaly_map", "gt_mask"), fpr_limit=0.05, prefix="pixel_")
    auroc = create_anomalib_metric(M.PixelAUROC)(fields=("anomaly_map", "gt_mask"))
    for metric in (pro, auroc):
        metric.update(batch)
    assert pro.name == "pixel_PRO"
    assert float(pro.compute()) == pytest.approx(M.pro_score(maps, masks, 0.05), abs=1e-12)
    assert float(auroc.compute()) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)


def test_score_histogram_merges_rows_in_any_order_to_the_same_bins():
    maps, masks = _maps(7, n=4, decimals=2)
    parts = [M.ScoreHistogram() for _ in range(2)]
    parts[0].add(maps[:2], masks[:2].astype(bool))
    parts[1].add(maps[2:], masks[2:].astype(bool))
    whole = M.ScoreHistogram()
    whole.add(maps, masks.astype(bool))
    merged = M.ScoreHistogram.from_rows(np.concatenate([parts[1].rows(), parts[0].rows()]))
    np.testing.assert_array_equal(merged.rows(), whole.rows())


def _gloo_rank(rank: int, store: str, queue) -> None:
    """One process of test_two_gloo_processes_sync_to_the_single_process_value."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    maps, masks = _maps(8, n=10, size=24)
    part = slice(0, 7) if rank == 0 else slice(7, 10)  # uneven: the gather pads and trims
    values = {}
    for name in ("pixel_auroc", "pro"):
        metric = CASES[name][0]()
        metric.update(maps[part], masks[part])
        values[name] = (float(metric.compute()), metric.bounds())
    idle = M.PixelAUROC()  # only rank 0 sees data
    if rank == 0:
        idle.update(maps, masks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values["idle"] = (float(idle.compute()), None)
    queue.put((rank, values))
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_sync_to_the_single_process_value(tmp_path):
    # real torch.distributed (gloo, loopback): what the simulated sync above cannot show is the
    # all_gather itself, which fails when one process sends torchmetrics' 1-D float32 placeholder
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_gloo_rank, args=(rank, str(tmp_path / "store"), queue)) for rank in (0, 1)]
    for proc in procs:
        proc.start()
    results = dict(queue.get(timeout=300) for _ in procs)
    for proc in procs:
        proc.join(timeout=60)
    maps, masks = _maps(8, n=10, size=24)
    auroc = roc_auc_score(masks.ravel(), maps.ravel())
    for values in results.values():
        assert values["pixel_auroc"][0] == pytest.approx(auroc, abs=1e-12)
        assert values["pro"][0] == pytest.approx(M.pro_score(maps, masks), abs=1e-12)
        assert values["pro"][1][0] == values["pro"][1][1] == values["pro"][0]
        assert values["idle"][0] == pytest.approx(auroc, abs=1e-12)
