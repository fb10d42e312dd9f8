"""The loop hands its results to recorders: hooks come in the documented order, with the right
arguments, before a cell is stored; built-in recorders can be left out; `spec` becomes config.yaml."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cl_iad.recorders import Cell, Recorder, Recorders, RunContext, RunResult, builtin_recorders
from cl_iad.results import ResultStore
from cl_iad.runner import run
from cl_iad.strategies import Strategy, build_model

SPEC = {"data": {"dataset": "folder", "root": Path("/data/x"), "tasks": ["b", "a"]},
        "model": {"name": "patchcore", "preset": None}, "run": {"seed": 0, "metrics": ("image_auroc",)}}


class Log(Recorder):
    """Records every hook call, and what was on disk when it came."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def on_run_start(self, ctx: RunContext) -> None:
        self.calls.append(("on_run_start", ctx.n_tasks, ctx.resumed))

    def on_task_fitted(self, ctx: RunContext, i: int, task) -> None:
        has_ckpt = (ctx.run_dir / "checkpoints" / f"after_task_{i:03d}.pt").is_file()
        self.calls.append(("on_task_fitted", i, task.name, has_ckpt))

    def on_cell(self, ctx: RunContext, cell: Cell) -> None:
        stored = {(r.trained_upto, r.eval_task) for r in ctx.store.cells().itertuples()}
        thresholds = ctx.run_dir / "thresholds.jsonl"
        lines = thresholds.read_text().splitlines() if thresholds.is_file() else []
        self.calls.append(("on_cell", cell.i, cell.j, cell.trained.name, cell.evaluated.name, sorted(cell.values),
                           len(cell.labels) == len(cell.pred.pred_score), (cell.i, cell.evaluated.name) in stored,
                           any(json.loads(x)["trained_upto"] == cell.i and json.loads(x)["eval_task"] == cell.evaluated.name
                               for x in lines)))

    def on_row_end(self, ctx: RunContext, i: int, row: dict[str, float]) -> None:
        self.calls.append(("on_row_end", i, sorted(row)))

    def on_run_end(self, ctx: RunContext, result: RunResult) -> None:
        self.calls.append(("on_run_end", sorted(result.matrices), sorted(result.summary), len(result.plots)))

    def close(self) -> None:
        self.calls.append(("close",))


def _strategy(cache) -> Strategy:
    return Strategy(build_model("patchcore"), "naive", cache=cache)


ARGS = {"name": "r", "metrics": ["image_auroc"], "wandb": "off", "progress": False, "save_model": False}


@pytest.fixture(scope="module")
def two_tasks(tiny_stream):
    return tiny_stream[:2]


@pytest.fixture(scope="module")
def logged_run(two_tasks, shared_cache, tmp_path_factory) -> tuple[Path, Log, Log]:
    """One 2-task run with a spec and a Log recorder, then the same run again (finished: nothing to do)."""
    out = tmp_path_factory.mktemp("recorders")
    first, again = Log(), Log()
    run_dir = run(_strategy(shared_cache), two_tasks, out, spec=SPEC, recorders=[first], **ARGS).run_dir
    run(_strategy(shared_cache), two_tasks, out, recorders=[again], **ARGS)
    return run_dir, first, again


def test_a_custom_recorder_gets_every_hook_in_order_before_each_cell_is_stored(logged_run, two_tasks):
    _, log, _ = logged_run
    a, b = two_tasks.names
    cell = ["image_auroc"]
    # on_cell: (i, j, trained, evaluated, metrics, predictions match labels, already in cells.csv, thresholds line)
    assert log.calls == [
        ("on_run_start", 2, -1),
        ("on_task_fitted", 0, a, True),  # the checkpoint is written before the hook, before the row
        ("on_cell", 0, 0, a, a, cell, True, False, True),
        ("on_cell", 0, 1, a, b, cell, True, False, False),  # unseen task: no threshold of its own
        ("on_row_end", 0, [f"image_auroc/{a}", f"image_auroc/{b}"]),
        ("on_task_fitted", 1, b, True),
        ("on_cell", 1, 0, b, a, cell, True, False, True),
        ("on_cell", 1, 1, b, b, cell, True, False, True),
        ("on_row_end", 1, [f"image_auroc/{a}", f"image_auroc/{b}"]),
        ("on_run_end", cell, cell, 3),  # heatmap, forgetting curves, examples grid: built-ins ran first
        ("close",),
    ]


def test_rerunning_a_finished_run_restores_its_checkpoint_and_hands_no_cell_to_recorders(logged_run):
    run_dir, _, again = logged_run
    assert again.calls == [("on_run_start", 2, 1), ("on_row_end", 0, []), ("on_row_end", 1, []),
                           ("on_run_end", ["image_auroc"], ["image_auroc"], 3), ("close",)]
    assert len(ResultStore(run_dir).cells()) == 4


def test_spec_is_written_to_config_yaml_in_its_own_key_order(logged_run):
    run_dir, _, _ = logged_run
    text = (run_dir / "config.yaml").read_text()
    assert yaml.safe_load(text) == {"data": {"dataset": "folder", "root": "/data/x", "tasks": ["b", "a"]},
                                    "model": {"name": "patchcore", "preset": None},
                                    "run": {"seed": 0, "metrics": ["image_auroc"]}}
    assert text.index("data:") < text.index("model:") < text.index("run:") and text.index("root") < text.index("tasks")
    assert json.loads((run_dir / "config.json").read_text())["settings"]["metrics"] == ["image_auroc"]


def test_without_spec_no_config_yaml_is_written(tiny_stream, shared_cache, tmp_path):
    run_dir = run(_strategy(shared_cache), tiny_stream[:1], tmp_path, checkpoint=False, **ARGS).run_dir
    assert (run_dir / "config.json").is_file() and not (run_dir / "config.yaml").exists()
    assert not (run_dir / "checkpoints").exists(), "checkpoint=False leaves the Checkpoints recorder out"


class _Boom(Exception):
    pass


class FailsOnSecondCell(Log):
    def on_cell(self, ctx: RunContext, cell: Cell) -> None:
        if cell.j == 1:
            raise _Boom
        super().on_cell(ctx, cell)


def test_a_recorder_failing_on_a_cell_keeps_that_cell_out_of_cells_csv_and_is_still_closed(two_tasks, shared_cache,
                                                                                            tmp_path):
    log = FailsOnSecondCell()
    with pytest.raises(_Boom):
        run(_strategy(shared_cache), two_tasks, tmp_path, recorders=[log], **ARGS)
    cells = ResultStore(tmp_path / "r").cells()
    assert list(zip(cells.trained_upto, cells.eval_task)) == [(0, two_tasks.names[0])]
    assert log.calls[-1] == ("close",)


def test_builtin_recorders_follow_the_flags_in_call_order():
    names = [type(r).__name__ for r in builtin_recorders("offline", None, True, True, {"a": 1})]
    assert names == ["ConfigFile", "Checkpoints", "Tables", "Plots", "Thresholds", "Examples", "ModelSaver",
                     "WandbLogger"]
    names = [type(r).__name__ for r in builtin_recorders("off", None, checkpoint=False, save_model=False)]
    assert names == ["Tables", "Plots", "Thresholds", "Examples"]


def test_recorders_close_all_even_when_one_fails_then_raise_the_first_failure():
    closed = []

    class Closes(Recorder):
        def __init__(self, fail: bool) -> None:
            self.fail = fail

        def close(self) -> None:
            closed.append(self)
            if self.fail:
                raise _Boom

    recs = [Closes(True), Closes(False)]
    with pytest.raises(_Boom):
        Recorders(recs).close()
    assert closed == recs


def test_a_spec_that_is_not_a_dict_is_refused_before_anything_runs(tiny_stream, shared_cache, tmp_path):
    with pytest.raises(TypeError, match="spec must be a dict"):
        run(_strategy(shared_cache), tiny_stream, tmp_path, spec=["not", "a", "dict"], **ARGS)


def test_checkpoint_module_imports_nothing_from_strategies_at_run_time():
    import ast

    from cl_iad import checkpoint
    from cl_iad.scenarios import base

    tree = ast.parse(Path(checkpoint.__file__).read_text())
    guarded = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
               for n in ast.walk(node)}
    imports = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and id(n) not in guarded]
    assert not [ast.unparse(n) for n in imports if "strategies" in (n.module or "")]
    assert checkpoint.encode_samples is base.encode_samples and checkpoint.decode_samples is base.decode_samples
