"""`cl-iad report --layout seed | continual`: the published tables, end to end on a fake MVTec AD tree,
and the sweep keys that make their runs (``per_category``, ``groups``, per-model strategies and image size)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fake_datasets import write_mvtec

from cl_iad.cli import main
from cl_iad.report import _continual_reference, reference_table
from cl_iad.sweep import SweepConfigError, expand, load_config, run_sweep

ROOT = Path(__file__).resolve().parents[1]
MVTEC = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut", "pill", "screw", "tile",
         "toothbrush", "transistor", "wood", "zipper")
METRICS = "image_auroc,pixel_auroc,pro"
PERCENT = re.compile(r"^\d{1,3}\.\d{2}$")


@pytest.fixture(scope="module")
def fast_recorders():
    """The heatmaps, forgetting plots and example grids take most of a tiny run's time and no table reads them."""
    from cl_iad import recorders

    with pytest.MonkeyPatch.context() as mp:
        for cls, hook in ((recorders.Plots, "on_run_end"), (recorders.Examples, "on_cell"),
                          (recorders.Examples, "on_run_end")):
            mp.setattr(cls, hook, lambda self, ctx, arg: None)
        yield


@pytest.fixture(scope="module")
def mvtec_root(tmp_path_factory):
    """All 15 MVTec AD categories in the real layout, 3 training images and 2 test images each, 32 px."""
    return write_mvtec(tmp_path_factory.mktemp("mvtec"), categories=MVTEC, n_train=3, n_good=1, defects=("crack",),
                       n_defect=1, size=32)


def _seed_sweep(root: Path) -> dict:
    return {"name": "seed_tiny", "dataset": "mvtec", "root": str(root), "image_size": 64,
            "categories": ["bottle", "screw"], "per_category": True, "metrics": METRICS.split(","), "wandb": "off",
            "models": [{"name": "patchcore", "preset": "light"}, {"name": "padim", "preset": "light", "n_features": 10},
                       {"name": "dfkde", "preset": "light", "n_pca_components": 2}]}  # 3 training images


@pytest.fixture(scope="module")
def seed_report(mvtec_root, fast_recorders, tmp_path_factory):
    """A per_category sweep (3 light models x 2 categories), then `cl-iad report --layout seed --reference`."""
    out = tmp_path_factory.mktemp("seed")
    results = run_sweep(_seed_sweep(mvtec_root), out, progress=False)
    assert [r["status"] for r in results] == ["done"] * 6, results
    printed = _report(out, "--layout", "seed", "--reference")
    return out, printed


@pytest.fixture(scope="module")
def continual_report(mvtec_root, fast_recorders, tmp_path_factory):
    """PaDiM naive on the IM-IAD protocol (15 tasks) and replay on 10-1x5, then `cl-iad report --layout continual`."""
    out = tmp_path_factory.mktemp("continual")
    common = ["run", "--dataset", "mvtec", "--root", str(mvtec_root), "--model", "padim", "--preset", "light",
              "--param", "n_features=10", "--image-size", "64", "--metrics", METRICS, "--out", str(out), "--wandb", "off", "--no-progress",
              "--no-checkpoint"]
    assert main([*common, "--strategy", "naive", "--name", "padim-naive-1x15"]) == 0
    assert main([*common, "--strategy", "replay", "--buffer-size", "2", "--group", "10-1x5",
                 "--name", "padim-replay-10-1x5"]) == 0
    printed = _report(out, "--layout", "continual")
    return out, printed


def _report(out: Path, *options: str) -> str:
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(["report", str(out), *options]) == 0
    return buffer.getvalue()


def _table(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, index_col=0, dtype=str, keep_default_na=False)


def _final(run_dir: Path, metric: str) -> float:
    """A 1-task run's only cell, read from its matrix as the runner wrote it."""
    return float(pd.read_csv(run_dir / f"matrix_{metric}.csv", index_col=0).iloc[0, 0])


# ---- the seed layout ------------------------------------------------------------------------------
def test_seed_layout_writes_one_table_per_metric_in_three_formats(seed_report):
    out, printed = seed_report
    for metric in ("image_auroc", "pixel_auroc", "pro"):
        for ext in ("csv", "md", "tex"):
            assert (out / "report" / f"seed_{metric}.{ext}").is_file(), (metric, ext)
        assert (out / "report" / f"seed_{metric}.md").read_text() in printed
    tex = (out / "report" / "seed_image_auroc.tex").read_text()
    assert r"\begin{tabular}" in tex and r"ours - published" in tex and r"\footnotesize" in tex


def test_seed_table_has_models_as_rows_and_categories_in_published_order(seed_report):
    out, _ = seed_report
    table = _table(out / "report" / "seed_image_auroc.csv")
    # published row order (DFKDE, PaDiM, PatchCore), three rows each; screw comes before bottle as published
    assert list(table.index) == ["DFKDE (light)"] * 3 + ["PaDiM (light)"] * 3 + ["PatchCore (light)"] * 3
    assert list(table.columns) == ["value", "screw", "bottle", "mean"]
    assert list(table["value"][:3]) == ["ours", "published", "ours - published"]


def test_seed_cells_are_percent_with_two_decimals_and_match_the_runs(seed_report):
    out, _ = seed_report
    table = _table(out / "report" / "seed_pro.csv")
    ours = table[table.value == "ours"]
    padim = ours.loc["PaDiM (light)"]
    for category in ("screw", "bottle"):
        assert PERCENT.match(padim[category]), padim[category]
        run = out / f"mvtec-padim_light-naive-alphabetical-{category}"
        assert padim[category] == f"{100 * _final(run, 'pro'):.2f}"
    assert padim["mean"] == f"{np.mean([float(padim['screw']), float(padim['bottle'])]):.2f}"


def test_seed_cells_without_such_output_are_a_dash(seed_report):
    out, _ = seed_report
    for metric in ("pixel_auroc", "pro"):  # DFKDE is a classification model: no anomaly map
        dfkde = _table(out / "report" / f"seed_{metric}.csv").loc["DFKDE (light)"]
        assert (dfkde[["screw", "bottle", "mean"]].to_numpy() == "-").all(), dfkde
    image = _table(out / "report" / "seed_image_auroc.csv").loc["DFKDE (light)"]
    assert PERCENT.match(image[image.value == "ours"]["screw"].iloc[0])


def test_seed_reference_is_the_shipped_csv_and_the_difference_is_ours_minus_it(seed_report):
    out, _ = seed_report
    shipped = pd.read_csv(ROOT / "cl_iad" / "reference" / "seed_mvtec_single_task.csv")
    published = shipped.query("model == 'PaDiM' and category == 'screw' and metric == 'image_auroc'")
    value = float(published.value_percent.iloc[0])
    rows = _table(out / "report" / "seed_image_auroc.csv").loc["PaDiM (light)"].set_index("value")
    assert rows.loc["published", "screw"] == f"{value:.2f}"
    ours = float(rows.loc["ours", "screw"])
    assert rows.loc["ours - published", "screw"] == f"{ours - value:+.2f}"
    # the same numbers in the long table, with the run count; light presets are flagged as off the published settings
    long = pd.read_csv(out / "report" / "seed_long.csv")
    cell = long.query("model == 'PaDiM (light)' and category == 'screw' and metric == 'image_auroc'").iloc[0]
    assert (cell.ours_percent, cell.published_percent, cell.runs) == (ours, value, 1)
    assert "Not at the published settings" in (out / "report" / "seed_image_auroc.md").read_text()


def test_reference_tables_are_package_data():
    seed = reference_table("seed_mvtec_single_task.csv")
    assert len(seed) == 15 * 15 * 3 and seed.value_percent.isna().sum() == 3 * 15 * 2 + 1  # no maps; RKDE carpet
    anchors = reference_table("continual_mvtec_anchors.csv")
    assert set(anchors.source) == {"IM-IAD", "CLAD"}


# ---- the continual layout -------------------------------------------------------------------------
def _fm_by_hand(R: np.ndarray) -> tuple[float, float]:
    """(Chaudhry, IM-IAD) average forgetting of a T x T matrix, written out from their definitions."""
    T = len(R)
    per_task = [max(R[l][j] for l in range(j, T - 1)) - R[T - 1][j] for j in range(T - 1)]
    return sum(per_task) / (T - 1), sum(per_task) / T


def test_continual_layout_has_two_rows_per_run_one_per_fm_definition(continual_report):
    out, printed = continual_report
    table = _table(out / "report" / "continual.csv")
    assert (out / "report" / "continual.md").read_text() in printed
    assert (out / "report" / "continual.tex").is_file()
    assert list(table.index) == ["PaDiM (light)"] * 4
    assert list(table.regime) == ["naive", "naive", "replay", "replay"]
    assert list(table.protocol) == ["1x15", "1x15", "10-1x5", "10-1x5"]
    assert list(table.tasks) == ["15", "15", "6", "6"]
    assert list(table["FM definition"]) == ["Chaudhry: mean over T-1", "IM-IAD: sum / T"] * 2
    assert list(table.columns[-7:]) == ["image AUROC", "pixel AUROC", "PRO", "FM image AUROC", "FM pixel AUROC",
                                        "FM PRO", "published"]


@pytest.mark.parametrize("name,protocol,forgets", [("padim-naive-1x15", "1x15", False),
                                                   ("padim-replay-10-1x5", "10-1x5", True)])
def test_continual_fm_matches_both_definitions_by_hand(continual_report, name, protocol, forgets):
    out, _ = continual_report
    rows = _table(out / "report" / "continual.csv").query(f"protocol == '{protocol}'").set_index("FM definition")
    differ = False
    for metric, column in (("image_auroc", "FM image AUROC"), ("pixel_auroc", "FM pixel AUROC"), ("pro", "FM PRO")):
        R = pd.read_csv(out / name / f"matrix_{metric}.csv", index_col=0).to_numpy(dtype=float)
        chaudhry, im_iad = _fm_by_hand(R)
        assert rows.loc["Chaudhry: mean over T-1", column] == f"{100 * chaudhry:.2f}"
        assert rows.loc["IM-IAD: sum / T", column].split(" ")[0] == f"{100 * im_iad:.2f}"
        differ |= f"{100 * chaudhry:.2f}" != f"{100 * im_iad:.2f}"
        final = rows.loc["Chaudhry: mean over T-1", METRIC_COLUMNS[metric]].split(" ")[0]
        assert final == f"{100 * np.mean(R[-1]):.2f}"
    # on the fake tree PaDiM forgets little; on 6 tasks enough to tell the two averages apart in the table
    assert differ or not forgets, "this run forgot nothing: the two definitions cannot be told apart"


METRIC_COLUMNS = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "pro": "PRO"}


def test_continual_im_iad_values_sit_beside_the_matching_run_only(continual_report):
    out, _ = continual_report
    table = _table(out / "report" / "continual.csv")
    im_iad = table[table.protocol == "1x15"].set_index("FM definition")
    # PaDiM in IM-IAD: image AUROC 0.545, FM image 0.368 under IM-IAD's own definition (divided by T)
    ours = float(im_iad.loc["IM-IAD: sum / T", "image AUROC"].split(" ")[0])
    assert im_iad.loc["IM-IAD: sum / T", "image AUROC"] == f"{ours:.2f} (54.50, {ours - 54.5:+.2f})"
    assert "(36.80, " in im_iad.loc["IM-IAD: sum / T", "FM image AUROC"]
    assert "(" not in im_iad.loc["Chaudhry: mean over T-1", "FM image AUROC"]  # other definition: no anchor
    assert set(im_iad.published) == {"IM-IAD"}
    grouped = table[table.protocol == "10-1x5"]
    assert set(grouped.published) == {"-"} and not grouped["image AUROC"].str.contains(r"\(").any()


def test_published_anchors_match_on_model_regime_protocol_and_order():
    padim = {"model": "padim", "regime": "naive", "dataset": "mvtec", "order": "alphabetical"}
    assert _continual_reference(padim, "1x15")[0] == "IM-IAD"
    assert _continual_reference({**padim, "order": "reverse"}, "1x15") == ("", {})
    assert _continual_reference({**padim, "dataset": "visa"}, "1x15") == ("", {})
    cfa = {"model": "cfa", "regime": "replay", "dataset": "mvtec", "order": "random:3"}
    source, values = _continual_reference(cfa, "1x10")
    assert source == "CLAD" and values["pro"][0] == 75.0
    assert _continual_reference(cfa, "1x15") == ("", {})


def test_reference_flag_needs_a_published_layout(seed_report, capsys):
    out, _ = seed_report
    assert main(["report", str(out), "--reference"]) == 2
    assert "--layout seed" in capsys.readouterr().err
    assert main(["report", str(out), "--layout", "continual"]) == 2  # only 1-task runs there
    assert "two tasks or more" in capsys.readouterr().err


# ---- the sweep keys and the shipped configs ---------------------------------------------------------
def test_per_category_makes_one_1task_stream_per_category(tmp_path):
    jobs = expand(_seed_sweep(tmp_path), tmp_path)
    assert len(jobs) == 3 * 2
    assert {tuple(j.config["data"]["categories"]) for j in jobs} == {("bottle",), ("screw",)}
    assert "mvtec-padim_light-naive-alphabetical-screw" in {j.name for j in jobs}


def test_groups_and_model_entries_make_their_own_streams_regimes_and_sizes(tmp_path):
    cfg = {"name": "g", "dataset": "mvtec", "root": "/data", "groups": ["1x15", "10-5"], "strategies": ["naive"],
           "models": [{"name": "patchcore", "strategies": ["naive", "per_task"]}, {"name": "csflow", "image_size": 768}]}
    jobs = {j.name: j.config for j in expand(cfg, tmp_path)}
    assert sorted(jobs) == sorted(f"mvtec-{m}-alphabetical-{g}" for g in ("1x15", "10-5")
                                  for m in ("patchcore-naive", "patchcore-per_task", "csflow-naive"))
    assert jobs["mvtec-patchcore-naive-alphabetical-10-5"]["data"]["group"] == "10-5"
    assert jobs["mvtec-csflow-naive-alphabetical-1x15"]["data"]["image_size"] == 768
    assert jobs["mvtec-csflow-naive-alphabetical-1x15"]["model"]["params"] == {}


@pytest.mark.parametrize("bad,message", [
    ({"per_category": "yes"}, "true or false"),
    ({"per_category": True, "categories": None}, "needs the list of categories"),
    ({"per_category": True, "group": "10-5"}, "cannot be grouped"),
    ({"groups": ["10-5", "10-5"]}, "listed twice"),
    ({"groups": ["ten-five"]}, "expected a protocol"),
    ({"groups": ["10-5"], "group": "14-1"}, "not both"),
    ({"groups": "10-5"}, "non-empty list"),
    ({"models": [{"name": "padim", "strategies": "naive"}]}, "list of regimes"),
    ({"models": [{"name": "padim", "image_size": "big"}]}, "positive integer"),
])
def test_bad_stream_keys_are_refused_with_the_fix(tmp_path, bad, message):
    cfg = {**_seed_sweep(tmp_path), "per_category": False, **bad}
    with pytest.raises(SweepConfigError, match=message):
        expand(cfg, tmp_path)


def test_seed_config_is_the_published_table_at_the_benchmark_presets(tmp_path):
    from cl_iad.models.registry import preset_kwargs

    jobs = expand(load_config(ROOT / "experiments" / "configs" / "seed_mvtec.yaml"), tmp_path)
    assert len(jobs) == 15 * 15
    assert {len(j.config["data"]["categories"]) for j in jobs} == {1}
    assert {j.config["model"]["preset"] for j in jobs} == {"benchmark"}
    sizes = {j.model: j.config["data"]["image_size"] for j in jobs}
    assert sizes.pop("csflow") == 768 and sizes.pop("uflow") == 448 and set(sizes.values()) == {256}
    # the settings of the reference README
    patchcore = preset_kwargs("patchcore", "benchmark")
    assert (patchcore["backbone"], patchcore["layers"], patchcore["coreset_ratio"], patchcore["num_neighbors"]) == (
        "wide_resnet50_2", ["layer2", "layer3"], 0.1, 9)
    padim = preset_kwargs("padim", "benchmark")
    assert (padim["backbone"], padim["layers"]) == ("resnet18", ["layer1", "layer2", "layer3"])
    rd = preset_kwargs("reverse_distillation", "benchmark")
    assert (rd["backbone"], rd["layers"], rd["epochs"]) == ("wide_resnet50_2", ["layer1", "layer2", "layer3"], 200)
    assert (preset_kwargs("cfa", "benchmark")["epochs"], preset_kwargs("csflow", "benchmark")["epochs"]) == (30, 240)


def test_continual_config_runs_every_protocol_for_the_named_models(tmp_path):
    jobs = expand(load_config(ROOT / "experiments" / "configs" / "continual_mvtec.yaml"), tmp_path)
    groups = {j.config["data"]["group"] for j in jobs}
    assert groups == {"1x15", "14-1", "10-5", "3x5", "10-1x5"}
    regimes = {(j.model, j.strategy) for j in jobs}
    for model in ("patchcore", "padim", "reverse_distillation", "fastflow", "cfa", "stfpm", "draem", "csflow"):
        assert {(model, "naive"), (model, "replay")} <= regimes, model
    assert {m for m, s in regimes if s == "per_task"} == {"patchcore"}
    assert {j.order for j in jobs} == {"alphabetical"}


def test_reference_tables_ship_in_the_wheel():
    import tomllib

    # without this, setuptools leaves the CSVs out of the wheel and --reference fails once installed
    data = tomllib.loads((ROOT / "pyproject.toml").read_text()).get("tool", {}).get("setuptools", {})
    assert {"reference/*.csv", "reference/*.md"} <= set(data.get("package-data", {}).get("cl_iad", [])), (
        "add to pyproject.toml:\n[tool.setuptools.package-data]\ncl_iad = [\"reference/*.csv\", \"reference/*.md\"]")
