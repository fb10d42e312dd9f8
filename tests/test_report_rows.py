"""`cl-iad report` averages only over task orders: any other differing setting makes its own row."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cl_iad.report import category_table, find_runs, method_labels, summary_table
from cl_iad.results import write_tables

TASKS = ["a", "b"]


def _fake_run(root: Path, name: str, value: float, **settings) -> None:
    """A finished run folder: config.json, cells-derived matrices and summary, as the runner writes."""
    d = root / name
    d.mkdir(parents=True)
    base = {"dataset": "mvtec", "root": f"/data/{name}", "tasks": TASKS, "order": "alphabetical",
            "model": "patchcore", "regime": "naive", "preset": None, "backbone": "efficientnet_lite0",
            "image_size": 256, "metrics": ["image_auroc"], "task_aware": False}
    json.dump({"name": name, "settings": {**base, **settings}}, (d / "config.json").open("w"))
    cells = pd.DataFrame([(i, TASKS[i], t, "image_auroc", value) for i in range(2) for t in TASKS],
                         columns=["trained_upto", "trained_task", "eval_task", "metric", "value"])
    write_tables(d, cells, TASKS, ["image_auroc"], False)


def test_runs_that_differ_only_in_order_share_one_row(tmp_path):
    _fake_run(tmp_path, "o1", 0.8, order="alphabetical", tasks=["a", "b"])
    _fake_run(tmp_path, "o2", 0.6, order="reverse", tasks=["b", "a"])
    table = category_table(find_runs(tmp_path), "image_auroc")
    assert list(table.index) == ["patchcore + naive"]
    assert table.loc["patchcore + naive", "a"] == f"0.700 ± {np.std([0.8, 0.6], ddof=1):.3f}"


@pytest.mark.parametrize("key,first,second", [
    ("preset", "light", "benchmark"), ("dataset", "mvtec", "visa"), ("backbone", "resnet18", "wide_resnet50_2"),
    ("image_size", 64, 256), ("coreset_ratio", 0.1, 0.01), ("eval_mode", "aware", "agnostic"),
])
def test_runs_with_another_setting_are_never_averaged_together(tmp_path, key, first, second):
    _fake_run(tmp_path, "r1", 0.9, **{key: first})
    _fake_run(tmp_path, "r2", 0.5, **{key: second})
    runs = find_runs(tmp_path)
    table = summary_table(runs, ("image_auroc",))
    assert len(table) == 2, table.index
    labels = sorted(table.index)
    # the differing setting is named in the row label (the preset as model_preset)
    assert all((f"_{first}" if key == "preset" else f"{key}={first}") in labels[0] + labels[1] for _ in labels)
    assert any((f"_{second}" if key == "preset" else f"{key}={second}") in label for label in labels)
    assert {table.loc[r.method, "image_auroc ACC"] for r in runs} == {"0.900", "0.500"}


def test_row_label_names_the_preset_and_only_the_settings_that_differ():
    s1 = {"model": "padim", "preset": "light", "regime": "replay", "dataset": "mvtec", "image_size": 64, "order": "x"}
    s2 = {**s1, "image_size": 128, "order": "y"}
    assert method_labels([s1, s2]) == ["padim_light + replay [image_size=64]", "padim_light + replay [image_size=128]"]
    assert method_labels([s1, {**s1, "order": "y"}]) == ["padim_light + replay"] * 2


def test_config_json_records_the_preset(tmp_path, tiny_stream):
    from cl_iad.runner import run
    from cl_iad.strategies import Strategy, build_model

    model = build_model("padim", "light")
    res = run(Strategy(model, "naive"), tiny_stream[:1], tmp_path, wandb="off", progress=False, save_model=False,
              checkpoint=False, metrics=["image_auroc"])
    assert json.loads((res.run_dir / "config.json").read_text())["settings"]["preset"] == "light"
