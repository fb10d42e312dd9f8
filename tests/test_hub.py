"""The Hugging Face Hub, offline: push up to the upload call, pull from a cache laid out as huggingface_hub lays it out.

Pushing is checked on the folder handed to ``HfApi.upload_folder`` (monkeypatched): its files, the
pickle-free model and a model card parsed and validated by huggingface_hub's own card classes.
Pulling (``hf://ORG/NAME`` models and dataset roots) runs with ``HF_HOME`` in a temporary folder and
``HF_HUB_OFFLINE=1``, against a cache written here exactly as huggingface_hub writes one
(``models--ORG--NAME/{blobs,snapshots/<commit>,refs/main}``); the conftest blocks the network anyway.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import fake_datasets as F
import numpy as np
import pytest

hub = pytest.importorskip("huggingface_hub", reason="the Hub needs pip install 'cl_iad[hub]'")

from cl_iad.cli import main
from cl_iad.deploy import STATE_DATA, STATE_TENSORS, export_model, load_strategy
from cl_iad.errors import UserError
from cl_iad.scenarios.remote import HubError, parse_hub_ref

COMMIT = "0123456789abcdef0123456789abcdef01234567"
METRICS = ("image_auroc", "pixel_auroc")
LFS = {".safetensors", ".png"}  # stored as LFS files on the Hub: their blob is named by the content's sha256


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def finished_run(tiny_stream, tmp_path_factory, shared_cache):
    """A 2-task PatchCore run with its saved model, config.yaml, matrices and plots."""
    from cl_iad.config import Config
    from cl_iad.runner import run

    config = Config.from_dict({"data": {"dataset": "synthetic", "categories": tiny_stream.names[:2]},
                               "run": {"metrics": list(METRICS), "wandb": "off"}})
    strategy = config.build_strategy(shared_cache)
    return run(strategy, tiny_stream[:2], tmp_path_factory.mktemp("runs"), name="tiny", metrics=METRICS,
               wandb="off", progress=False, checkpoint=False, spec=config.to_dict()).run_dir


@pytest.fixture
def hf_home(tmp_path, monkeypatch) -> Path:
    """HF_HOME in a temporary folder and HF_HUB_OFFLINE=1; the cache is HF_HOME/hub."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hf_home"


def _blob_id(data: bytes, lfs: bool) -> str:
    """The Hub's etag of a file: sha256 for LFS files, else the git blob sha1."""
    if lfs:
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def cache_repo(hf_home: Path, repo_type: str, repo_id: str, files: Path, commit: str = COMMIT,
               ref: str = "main") -> Path:
    """Lay `files` out as huggingface_hub caches a download of `repo_id` at `commit`; returns the snapshot.

    ``<cache>/<type>s--ORG--NAME/blobs/<etag>``, ``snapshots/<commit>/<path>`` as relative symlinks to
    the blobs, ``refs/<ref>`` holding the commit hash, and ``trees/<commit>.json`` (huggingface_hub >= 1.x).
    """
    storage = hf_home / "hub" / f"{repo_type}s--{repo_id.replace('/', '--')}"
    snapshot = storage / "snapshots" / commit
    tree = {}
    for path in sorted(p for p in files.rglob("*") if p.is_file()):
        rel = path.relative_to(files).as_posix()
        data = path.read_bytes()
        lfs = path.suffix in LFS
        blob = storage / "blobs" / _blob_id(data, lfs)
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
        tree[rel] = {"size": len(data), "blob_id": _blob_id(data, False),
                     **({"lfs_sha256": _blob_id(data, True), "lfs_size": len(data)} if lfs else {})}
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / ref).write_text(commit)  # no newline, as huggingface_hub writes it
    (storage / "trees").mkdir(exist_ok=True)
    (storage / "trees" / f"{commit}.json").write_text(json.dumps({"format_version": 1, "files": tree}))
    return snapshot


@pytest.fixture
def captured_upload(monkeypatch, tmp_path) -> dict:
    """HfApi.create_repo / create_branch / upload_folder replaced: arguments recorded, the folder copied."""
    calls: dict = {"folder_copy": tmp_path / "uploaded"}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"] = {"repo_id": repo_id, **kwargs}
        return f"https://huggingface.co/{repo_id}"

    def create_branch(self, repo_id, **kwargs):
        calls["create_branch"] = {"repo_id": repo_id, **kwargs}

    def upload_folder(self, **kwargs):
        calls["upload_folder"] = kwargs
        shutil.copytree(kwargs["folder_path"], calls["folder_copy"])
        return hub.CommitInfo(commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/{COMMIT}",
                              commit_message=kwargs.get("commit_message") or "", commit_description="",
                              oid=COMMIT)

    monkeypatch.setattr(hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(hub.HfApi, "create_branch", create_branch)
    monkeypatch.setattr(hub.HfApi, "upload_folder", upload_folder)
    return calls


def _scores(loaded, images: list[Path]) -> np.ndarray:
    from cl_iad.scenarios.base import ImageSet, Sample

    data = ImageSet([Sample(p, 0, "input") for p in images], loaded.image_size)
    return np.asarray(loaded.strategy.predict(data, task_id=None).pred_score)


# --------------------------------------------------------------------------- push


def test_push_uploads_the_run_with_a_pickle_free_model_and_a_valid_card(finished_run, captured_upload):
    from cl_iad.hub import push

    url = push(finished_run, "acme/cl-tiny", private=True)
    assert url.endswith(f"/commit/{COMMIT}")
    assert captured_upload["create_repo"] == {"repo_id": "acme/cl-tiny", "repo_type": "model", "private": True,
                                              "exist_ok": True}
    upload = captured_upload["upload_folder"]
    assert upload["repo_id"] == "acme/cl-tiny" and upload["repo_type"] == "model" and upload["revision"] is None
    folder = captured_upload["folder_copy"]
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert {"README.md", "config.yaml", "config.json", "summary.json", "cells.csv", "model/strategy.json",
            f"model/{STATE_TENSORS}", f"model/{STATE_DATA}"} <= files
    assert {f"matrix_{m}.csv" for m in METRICS} | {f"plots/matrix_{m}.png" for m in METRICS} <= files
    assert not [f for f in files if f.endswith((".pt", ".pkl", ".pickle", ".npz", ".ckpt", ".lock"))]
    from safetensors.torch import load_file

    assert load_file(folder / "model" / STATE_TENSORS)  # tensors, readable without torch.load
    json.loads((folder / "model" / STATE_DATA).read_text())  # strict JSON (no NaN)


def test_the_model_card_is_valid_for_huggingface_hub(finished_run, captured_upload):
    from huggingface_hub import EvalResult, ModelCard, ModelCardData, metadata_load
    from huggingface_hub.repocard_data import model_index_to_eval_results

    from cl_iad.hub import push

    push(finished_run, "acme/cl-tiny")
    readme = captured_upload["folder_copy"] / "README.md"
    card = ModelCard.load(readme, ignore_metadata_errors=False)  # raises on metadata it cannot parse
    assert isinstance(card.data, ModelCardData)
    assert card.data.library_name == "cl_iad"
    assert {"cl_iad", "anomaly-detection", "continual-learning", "patchcore", "naive", "synthetic"} <= set(
        card.data.tags)
    meta = metadata_load(readme)
    name, results = model_index_to_eval_results(meta["model-index"])
    assert name == "cl-tiny" and all(isinstance(r, EvalResult) for r in results)
    summary = json.loads((finished_run / "summary.json").read_text())
    by_type = {r.metric_type: r.metric_value for r in card.data.eval_results}
    for metric in METRICS:
        assert by_type[metric] == pytest.approx(summary[metric]["acc"], abs=1e-6)
        assert by_type[f"{metric}_fm"] == pytest.approx(summary[metric]["fm"], abs=1e-6)
    assert {r.task_type for r in results} == {"anomaly-detection"}
    text = card.text
    assert "| metric | ACC | BWT | FWT | FM |" in text and "## Forgetting per task" in text
    assert "](plots/matrix_image_auroc.png)" in text
    assert (captured_upload["folder_copy"] / "plots" / "matrix_image_auroc.png").is_file()
    assert "hf://acme/cl-tiny" in text
    # the card round-trips through huggingface_hub's writer unchanged in meaning
    again = ModelCard(str(card))
    assert again.data.to_dict() == card.data.to_dict()


def test_cli_push_creates_the_branch_and_uploads_to_it(finished_run, captured_upload, capsys):
    assert main(["push", str(finished_run), "--repo-id", "acme/cl-tiny", "--private", "--revision", "v1"]) == 0
    assert captured_upload["create_branch"]["branch"] == "v1"
    assert captured_upload["upload_folder"]["revision"] == "v1"
    assert "hf://acme/cl-tiny@v1" in capsys.readouterr().out


def test_push_of_a_folder_that_is_not_a_run_names_what_is_missing(tmp_path, captured_upload, capsys):
    assert main(["push", str(tmp_path), "--repo-id", "acme/x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a finished run" in err and str(tmp_path / "summary.json") in err
    assert "upload_folder" not in captured_upload


# --------------------------------------------------------------------------- pull


@pytest.fixture
def pushed(finished_run, tmp_path) -> Path:
    """The folder `cl-iad push` uploads, written without uploading."""
    from cl_iad.hub import export_run

    return export_run(finished_run, tmp_path / "pushed", "acme/cl-tiny")


def test_a_cached_hub_model_loads_offline_and_predicts_as_the_local_one(finished_run, pushed, hf_home, tiny_stream):
    cache_repo(hf_home, "model", "acme/cl-tiny", pushed)
    images = [s.image_path for s in tiny_stream[1].test.samples[:3]]
    local = load_strategy(finished_run / "model")
    for ref in ("hf://acme/cl-tiny", f"hf://acme/cl-tiny@{COMMIT}", "hf://acme/cl-tiny@main"):
        remote = load_strategy(ref)
        assert remote.task_names == local.task_names and remote.thresholds == local.thresholds
        np.testing.assert_array_equal(_scores(remote, images), _scores(local, images))


def test_cli_predict_reads_an_hf_model_dir(pushed, hf_home, tiny_stream, tmp_path, capsys):
    cache_repo(hf_home, "model", "acme/cl-tiny", pushed)
    image = tiny_stream[0].test.samples[0].image_path
    assert main(["predict", "--model-dir", "hf://acme/cl-tiny", "--input", str(image), "--out",
                 str(tmp_path / "pred")]) == 0
    assert (tmp_path / "pred" / "predictions.csv").is_file() and str(image) in capsys.readouterr().out


def test_a_model_missing_from_the_cache_offline_is_one_clear_error(hf_home, tmp_path, capsys):
    with pytest.raises(HubError, match="not in the Hugging Face cache .*HF_HUB_OFFLINE=1"):
        load_strategy("hf://acme/never-downloaded")
    assert main(["predict", "--model-dir", "hf://acme/never-downloaded", "--input", "x.png", "--out",
                 str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: hf://acme/never-downloaded is not in the Hugging Face cache")
    assert str(hf_home / "hub") in err


def test_a_repository_without_a_saved_model_is_refused(pushed, hf_home):
    shutil.rmtree(pushed / "model")
    cache_repo(hf_home, "model", "acme/no-model", pushed)
    with pytest.raises(UserError, match="holds no saved model"):
        load_strategy("hf://acme/no-model")


def test_an_mvtec_layout_dataset_on_the_hub_is_a_folder_root(hf_home, tmp_path):
    from cl_iad.config import Config
    from cl_iad.scenarios.streams import load_stream

    files = F.write_folder(tmp_path / "parts" / "lines", categories=("widget", "gadget"))
    snapshot = cache_repo(hf_home, "dataset", "acme/parts", tmp_path / "parts")
    stream = load_stream("folder", "hf://acme/parts/lines", image_size=F.SIZE)
    assert stream.names == ["gadget", "widget"] and stream.root == snapshot / "lines"
    local = load_stream("folder", files, image_size=F.SIZE)
    assert [len(t.test) for t in stream] == [len(t.test) for t in local]
    assert stream[0].test[0]["image"].shape == (3, F.SIZE, F.SIZE)
    # the way the command line and config.yaml name it (the root stays hf:// in the config)
    config = Config.from_dict({"data": {"dataset": "folder", "root": "hf://acme/parts/lines@main",
                                        "image_size": F.SIZE}})
    assert config.build_scenario().names == ["gadget", "widget"]
    with pytest.raises(HubError, match="hf://acme/other is not in the Hugging Face cache"):
        load_stream("folder", "hf://acme/other")


# --------------------------------------------------------------------------- the safetensors layout


def test_the_safetensors_layout_loads_like_state_pt(finished_run, tmp_path, tiny_stream):
    exported = export_model(finished_run / "model", tmp_path / "model")
    assert not (exported / "state.pt").exists()
    images = [s.image_path for s in tiny_stream[0].test.samples[:2]]
    np.testing.assert_array_equal(_scores(load_strategy(exported), images),
                                  _scores(load_strategy(finished_run / "model"), images))
    (exported / STATE_TENSORS).write_bytes(b"not safetensors")
    with pytest.raises(UserError, match="saved state cannot be read"):
        load_strategy(exported)


@pytest.mark.parametrize("text, expected", [
    ("hf://acme/cl-tiny", ("acme/cl-tiny", "", None)),
    ("hf://acme/cl-tiny@v1.2", ("acme/cl-tiny", "", "v1.2")),
    ("hf://acme/data/sub/dir@refs/pr/3", ("acme/data", "sub/dir", "refs/pr/3")),
    (str(Path("hf://acme/cl-tiny")), ("acme/cl-tiny", "", None)),  # pathlib collapses the double slash
    ("/data/mvtec", None),
])
def test_hub_references_are_parsed(text, expected):
    ref = parse_hub_ref(text)
    assert (None if ref is None else (ref.repo_id, ref.subfolder, ref.revision)) == expected
