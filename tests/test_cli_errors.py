"""Every failure a user can cause reaches them as one `error:` line with exit status 2, never a traceback."""

from __future__ import annotations

import builtins
import shutil
import subprocess
import sys
from pathlib import Path

import fake_datasets as F
import pytest
import torch

from cl_iad import cli
from cl_iad.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def mvtec_root(tmp_path_factory) -> Path:
    return F.write_mvtec(tmp_path_factory.mktemp("mvtec"), categories=("bottle", "cable"), n_train=6, n_good=2,
                         defects=("crack",), n_defect=2, size=64)


def _run_args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--dataset", "mvtec", "--root", str(root), "--image-size", "64", "--wandb", "off",
            "--no-progress", "--metrics", "image_auroc,pixel_auroc", "--out", str(out), *extra]


@pytest.fixture(scope="session")
def finished_run(mvtec_root, tmp_path_factory) -> Path:
    """A finished two-task PatchCore run (RUN_DIR), made once; tests copy it before breaking it."""
    out = tmp_path_factory.mktemp("runs")
    assert main(_run_args(mvtec_root, out, "--name", "base")) == 0
    return out / "base"


def _one_error(capsys, argv: list[str]) -> str:
    """Run the CLI, check status 2, no traceback and exactly one `error:` line; return that line."""
    status = main(argv)
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text
    assert status == 2, text
    return errors[0]


def _no_wandb_login(monkeypatch, tmp_path: Path) -> None:
    """No key anywhere wandb looks: environment, netrc (via $NETRC and $HOME), config dir."""
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    empty = tmp_path / "empty_home"
    empty.mkdir()
    monkeypatch.setenv("HOME", str(empty))
    monkeypatch.setenv("NETRC", str(empty / ".netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(empty / "wandb"))


@pytest.mark.parametrize("extra, expected", [
    (["--model", "nosuch"], "unknown model 'nosuch'"),
    (["--strategy", "ewc"], "strategy ['ewc'] not available for patchcore"),
    (["--config", "missing.yaml"], "missing.yaml does not exist"),
    (["--param", "novalue"], "--param 'novalue' is not KEY=VALUE"),
    (["--order", "sideways"], "order names unknown tasks ['sideways']: use alphabetical"),
], ids=["unknown-model", "unknown-strategy", "missing-config", "bad-param", "bad-order"])
def test_bad_run_option_is_one_error_line(capsys, mvtec_root, tmp_path, extra, expected):
    line = _one_error(capsys, _run_args(mvtec_root, tmp_path, *extra))
    assert expected in line
    assert not (tmp_path / "mvtec-patchcore-naive-alphabetical").exists()


def test_missing_dataset_root_names_the_folder_and_the_option(capsys, tmp_path):
    line = _one_error(capsys, _run_args(tmp_path / "nowhere", tmp_path / "out"))
    assert f"dataset root {tmp_path / 'nowhere'} does not exist" in line and "--root" in line


def test_wandb_online_without_a_key_fails_before_training(capsys, monkeypatch, mvtec_root, tmp_path):
    _no_wandb_login(monkeypatch, tmp_path)
    argv = _run_args(mvtec_root, tmp_path / "out", "--name", "w")
    argv[argv.index("--wandb") + 1] = "online"
    line = _one_error(capsys, argv)
    assert "WANDB_API_KEY" in line and "wandb login" in line and "--wandb offline" in line
    assert not (tmp_path / "out").exists(), "nothing may be written before the key is checked"


def test_wandb_key_in_netrc_counts_as_logged_in(monkeypatch, tmp_path):
    from cl_iad.wandb_log import require_wandb_login

    _no_wandb_login(monkeypatch, tmp_path)
    netrc = Path(tmp_path / "empty_home" / ".netrc")
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    netrc.chmod(0o600)
    require_wandb_login("online")  # no error


def _crashed_copy(finished_run: Path, tmp_path: Path) -> Path:
    """A copy of the finished run as if killed during row 1: row 0 complete, checkpoint of task 1 on disk."""
    run_dir = tmp_path / "out" / "base"
    shutil.copytree(finished_run, run_dir)
    cells = run_dir / "cells.csv"
    cells.write_text("".join(line for line in cells.read_text().splitlines(keepends=True)
                             if not line.startswith("1,")))
    assert (run_dir / "checkpoints" / "after_task_001.pt").is_file()
    return run_dir


def test_corrupt_checkpoint_names_the_file_and_says_delete_it(capsys, mvtec_root, finished_run, tmp_path):
    run_dir = _crashed_copy(finished_run, tmp_path)
    ckpt = run_dir / "checkpoints" / "after_task_001.pt"
    ckpt.write_bytes(b"\x80\x02garbage" * 20)
    line = _one_error(capsys, _run_args(mvtec_root, tmp_path / "out", "--name", "base"))
    assert str(ckpt) in line and "corrupt" in line and "delete it" in line


class _TouchOnUnpickle:
    """Unpickling this object opens (creates) a file: the side effect a shared folder must never trigger."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return builtins.open, (str(self.marker), "w")


def test_checkpoint_holding_a_pickled_object_is_refused_without_running_it(capsys, mvtec_root, finished_run,
                                                                           tmp_path):
    run_dir = _crashed_copy(finished_run, tmp_path)
    marker = tmp_path / "side_effect"
    ckpt = run_dir / "checkpoints" / "after_task_001.pt"
    payload = torch.load(ckpt, weights_only=True)
    torch.save({**payload, "strategy": {**payload["strategy"], "extra": _TouchOnUnpickle(marker)}}, ckpt)
    line = _one_error(capsys, _run_args(mvtec_root, tmp_path / "out", "--name", "base"))
    assert str(ckpt) in line and "pickled objects" in line and "delete it" in line
    assert not marker.exists(), "loading the checkpoint ran code from it"
    torch.load(ckpt, weights_only=False)  # the control: full unpickling does run it
    assert marker.exists()


def test_saved_model_holding_a_pickled_object_is_refused_by_predict(capsys, finished_run, mvtec_root, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(finished_run / "model", model_dir)
    marker = tmp_path / "side_effect"
    torch.save({"model": _TouchOnUnpickle(marker)}, model_dir / "state.pt")
    line = _one_error(capsys, ["predict", "--model-dir", str(model_dir), "--input",
                               str(mvtec_root / "bottle" / "test" / "good"), "--out", str(tmp_path / "pred")])
    assert str(model_dir / "state.pt") in line and "pickled objects" in line
    assert not marker.exists()


def test_predict_with_a_missing_model_dir(capsys, mvtec_root, tmp_path):
    line = _one_error(capsys, ["predict", "--model-dir", str(tmp_path / "nomodel"), "--input",
                               str(mvtec_root / "bottle" / "test" / "good"), "--out", str(tmp_path / "pred")])
    assert "is not a saved model" in line and "RUN_DIR/model" in line


def test_report_on_a_folder_without_runs(capsys, tmp_path):
    line = _one_error(capsys, ["report", str(tmp_path)])
    assert "no finished run" in line and str(tmp_path) in line


def test_empty_train_folder_through_the_entry_point(capsys, tmp_path):
    root = F.write_mvtec(tmp_path / "mv", categories=("bottle",), n_train=2, size=64)
    for png in (root / "bottle" / "train" / "good").iterdir():
        png.unlink()
    line = _one_error(capsys, _run_args(root, tmp_path / "out"))
    assert f"no training images in {root / 'bottle' / 'train' / 'good'}" in line


def test_internal_error_is_one_line_and_points_to_verbose(capsys, monkeypatch):
    def broken(args):
        raise RuntimeError("boom")

    monkeypatch.setattr(cli, "cmd_models", broken)
    assert main(["models"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1
    assert err.startswith("internal error: RuntimeError: boom") and "rerun with -v" in err
    assert main(["-v", "models"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_installed_entry_point_prints_no_traceback(tmp_path):
    """The real process: stderr has one error line and the status is 2."""
    proc = subprocess.run([sys.executable, "-m", "cl_iad", "run", "--dataset", "mvtec", "--wandb", "off"],
                          capture_output=True, text=True, cwd=REPO, timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    expected = ("error: dataset 'mvtec' needs its folder: pass --root FOLDER (comma-separated, one per dataset "
                "of a chain), or use --dataset synthetic")
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == [expected]
