"""Forgetting definitions side by side in summary.json, the joint gap, and the methods table of the report."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

from cl_iad.evaluation_extra import joint_gaps, joint_twins, methods_table
from cl_iad.metrics.continual import joint_gap, joint_gap_per_task
from cl_iad.mixed import write_mixed
from cl_iad.results import forgetting_side_by_side, summarise

R = pd.DataFrame([[0.9, 0.5, 0.4], [0.8, 0.9, 0.5], [0.6, 0.7, 0.95]], index=list("abc"), columns=list("abc"))
JOINT = pd.DataFrame([[0.9, 0.8, 1.0]] * 3, index=list("abc"), columns=list("abc"))


def test_each_definition_is_labelled_with_its_value():
    # old tasks: a: max(0.9, 0.8) - 0.6 = 0.3; b: 0.9 - 0.7 = 0.2. Chaudhry: 0.5 / 2; IM-IAD: 0.5 / 3
    out = forgetting_side_by_side(R)
    assert out["chaudhry"]["fm"] == pytest.approx(0.25) and "Chaudhry" in out["chaudhry"]["definition"]
    assert out["im-iad"]["fm"] == pytest.approx(0.5 / 3) and "divided by T" in out["im-iad"]["definition"]
    assert out["joint-gap"]["fm"] is None and "joint" in out["joint-gap"]["definition"]
    assert summarise(R, task_aware=False)["forgetting"] == out
    # joint final row (0.9, 0.8, 1.0) minus ours (0.6, 0.7, 0.95): (0.3 + 0.1 + 0.05) / 3
    assert forgetting_side_by_side(R, JOINT)["joint-gap"]["fm"] == pytest.approx(0.15)


def test_joint_gap_is_per_task_final_joint_minus_final_continual():
    assert joint_gap_per_task(R, JOINT) == pytest.approx([0.3, 0.1, 0.05])
    assert joint_gap(R, JOINT) == pytest.approx(0.15)
    with pytest.raises(ValueError, match="same tasks"):
        joint_gap(R, JOINT.iloc[:2, :2])


def _run(root: Path, name: str, regime: str, seed: int = 0, matrix: pd.DataFrame = R, routed: bool = False):
    d = root / name
    d.mkdir()
    spec = {"data": {"dataset": "synthetic", "order": "alphabetical"}, "model": {"name": "patchcore", "params": {}},
            "strategy": {"name": regime}, "run": {"seed": seed}}
    (d / "config.yaml").write_text(yaml.safe_dump(spec))
    matrices = {"image_auroc": matrix}
    if routed:
        matrices["routing_accuracy"] = pd.DataFrame([[1.0, np.nan, np.nan], [1.0, 0.5, np.nan], [1.0, 0.5, 0.75]],
                                                    index=list("abc"), columns=list("abc"))
    summary = {"image_auroc": summarise(matrix, task_aware=False)}
    return SimpleNamespace(run_dir=d, method=f"patchcore + {regime}", order="alphabetical", task_aware=False,
                           matrices=matrices, summary=summary, settings={})


def test_a_joint_run_of_the_same_data_model_and_seed_is_the_twin(tmp_path):
    naive, joint = _run(tmp_path, "naive", "naive"), _run(tmp_path, "joint", "joint", matrix=JOINT)
    other_seed = _run(tmp_path, "naive_seed1", "naive", seed=1)
    twins = joint_twins([naive.run_dir, joint.run_dir, other_seed.run_dir])
    assert twins == {naive.run_dir: joint.run_dir}
    assert joint_gaps([naive, joint, other_seed]) == {naive.run_dir: {"image_auroc": pytest.approx(0.15)}}


def test_the_methods_table_reads_mixed_routing_and_stored_bytes(tmp_path):
    ucad = _run(tmp_path, "ucad", "ucad", routed=True)
    joint = _run(tmp_path, "joint", "joint", matrix=JOINT)
    write_mixed(ucad.run_dir / "mixed.csv", {2: {"trained_upto": 2, "trained_task": "c", "tasks_seen": 3,
                                                 "n_images": 30, "mixed_image_auroc": 0.8, "mean_image_auroc": 0.75,
                                                 "mixed_pixel_auroc": float("nan"), "mean_pixel_auroc": float("nan"),
                                                 "pixels": 0, "routing_accuracy": 0.7}})
    (ucad.run_dir / "resources.csv").write_text("task,task_name,model_bytes,plugin_bytes\n0,a,10,5\n2,c,1024,1024\n")
    table = methods_table([ucad, joint])
    row = table.loc["patchcore + ucad"]
    assert row["final image_auroc"] == "0.750" and row["FM image (Chaudhry)"] == "0.250"
    assert row["FM image (IM-IAD)"] == "0.167" and row["joint gap image"] == "0.150"
    assert row["mixed image AUROC"] == "0.800" and row["mixed pixel AUROC"] == "-"
    assert row["routing accuracy"] == "0.750" and row["stored bytes"] == "2.0 kB"
    assert table.loc["patchcore + joint", "routing accuracy"] == "-"
