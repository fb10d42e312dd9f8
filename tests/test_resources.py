"""Cost accounting: a run with the Resources recorder writes resources.csv, one row per task, whose
sizes and backbone passes are exactly those of the run, and hands its values on with each row."""

from __future__ import annotations

import mmap
import time

import pytest

from cl_iad.recorders import Recorder
from cl_iad.resources import COLUMNS, PeakRss, read_rows, resources_table, summarise
from cl_iad.runner import run
from cl_iad.strategies import FeatureCache, Strategy, build_model

ARGS = {"name": "r", "metrics": ["image_auroc"], "wandb": "off", "progress": False, "save_model": False}


class Probe(Recorder):
    """After Resources: what the memory bank holds, and which rows resources.csv holds, at each row's end."""

    def __init__(self) -> None:
        self.bank_bytes: list[int] = []
        self.rows_on_disk: list[list[int]] = []

    def on_row_end(self, ctx, i, row) -> None:
        self.bank_bytes.append(ctx.strategy.model.module.memory_bank.nbytes)
        self.rows_on_disk.append(sorted(read_rows(ctx.run_dir)))


@pytest.fixture(scope="module")
def accounted_run(tiny_stream, tmp_path_factory):
    """PatchCore replay over two tasks, with a fresh feature cache so every image is a first pass."""
    stream = tiny_stream[:2]
    strategy = Strategy(build_model("patchcore"), "replay", buffer_size=4, cache=FeatureCache())
    probe = Probe()
    out = tmp_path_factory.mktemp("resources")
    run_dir = run(strategy, stream, out, recorders=[probe], **ARGS).run_dir
    return run_dir, stream, probe, out


def test_resources_csv_has_one_row_per_task_with_positive_times(accounted_run):
    run_dir, stream, _, _ = accounted_run
    text = (run_dir / "resources.csv").read_text().splitlines()
    assert text[0] == ",".join(COLUMNS)
    rows = read_rows(run_dir)
    assert [rows[i]["task_name"] for i in sorted(rows)] == stream.names
    for row in rows.values():
        assert row["fit_s"] > 0 and row["eval_s"] > 0
        assert row["peak_rss_bytes"] > 2**20
        assert row["peak_gpu_bytes"] is None  # on the CPU
        assert row["buffer_images"] == 4
        assert row["plugin_bytes"] == 4 * 4  # the buffer keeps paths, plus one float32 sampling weight per image


def test_model_bytes_are_the_patchcore_memory_banks_nbytes(accounted_run):
    run_dir, _, probe, _ = accounted_run
    rows = read_rows(run_dir)
    assert [rows[i]["model_bytes"] for i in sorted(rows)] == probe.bank_bytes
    assert all(b > 0 for b in probe.bank_bytes)


def test_backbone_passes_count_each_distinct_image_once(accounted_run):
    run_dir, stream, _, _ = accounted_run
    rows = read_rows(run_dir)
    a, b = stream
    # task 0: its training images, then every test set; task 1: its training images (the buffer is cached)
    assert rows[0]["backbone_passes"] == len(a.train) + len(a.test) + len(b.test)
    assert rows[1]["backbone_passes"] == len(b.train)
    distinct = {s.image_path for t in stream for s in (*t.train.samples, *t.test.samples)}
    assert sum(r["backbone_passes"] for r in rows.values()) == len(distinct)
    assert rows[1]["cache_bytes"] > 0


def test_each_row_is_on_disk_when_later_recorders_see_the_row(accounted_run):
    _, _, probe, _ = accounted_run
    assert probe.rows_on_disk == [[0], [0, 1]]


def test_a_finished_run_run_again_keeps_its_rows(accounted_run, tiny_stream):
    run_dir, stream, _, out = accounted_run
    before = (run_dir / "resources.csv").read_text()
    strategy = Strategy(build_model("patchcore"), "replay", buffer_size=4, cache=FeatureCache())
    run(strategy, stream, out, **ARGS)  # restored from the checkpoint: nothing fitted
    assert (run_dir / "resources.csv").read_text() == before


def test_summary_and_report_table(accounted_run):
    run_dir, _, _, _ = accounted_run
    s = summarise(run_dir)
    assert s["tasks"] == 2 and s["fit_s"] > 0 and s["rss_growth"] > 0
    table = resources_table([("patchcore replay", run_dir)])
    assert list(table.index) == ["patchcore replay"] and table.loc["patchcore replay", "tasks"] == "2"
    assert table.loc["patchcore replay", "peak GPU (MiB)"] == ""  # not measured on a CPU


def test_peak_rss_sees_an_allocation_inside_the_window():
    rss = PeakRss(interval=0.005).start()
    try:
        rss.reset()
        base = rss.peak()
        # a fresh anonymous mapping, touched: numpy's allocator may reuse memory already resident
        # late in a long test session (glibc raises its mmap threshold after large frees)
        block = mmap.mmap(-1, 64 * 2**20)
        block.write(b"\x01" * (64 * 2**20))
        time.sleep(0.05)  # a few sampling intervals
        assert rss.peak() >= base + 48 * 2**20
        block.close()
    finally:
        rss.stop()
