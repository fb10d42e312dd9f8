"""Video datasets as continual streams: each reader on a fake tree in its publisher's exact layout.

The trees hold tiny videos written by PyAV (32x32 frames), ``.mat`` and ``.npy`` masks written here,
and the readers are checked for labels, masks, lazy frame decoding and one clear error per bad file;
then a 3-scene ShanghaiTech stream and a UCSD Ped1 -> Ped2 stream run end to end with PatchCore.
"""

from __future__ import annotations

import math
from pathlib import Path

import fake_datasets as F
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("av", reason="video datasets need PyAV: pip install 'cl_iad[video]'")

from cl_iad.scenarios.base import DatasetLayoutError, ImageSet
from cl_iad.scenarios.frames import is_frame_ref, parse_ref, read_frame
from cl_iad.scenarios.streams import load_stream

V = 32  # frame size of the fake videos
SCENES = ("01", "02", "03")


# --------------------------------------------------------------------------- fake trees


def frame(scene: str, index: int, anomalous: bool) -> tuple[np.ndarray, np.ndarray]:
    """One RGB frame of a scene and its mask: the scene's texture, plus a bright square when anomalous."""
    return F.image(f"scene{scene}", index, anomalous, size=V)


def write_video(path: Path, frames: list[np.ndarray], fps: int = 25) -> Path:
    """An MPEG-4 part 2 video (the codec of Avenue's and ShanghaiTech's .avi files), written with PyAV."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = V, V, "yuv420p"
        stream.codec_context.gop_size = 4  # a few key frames, so reading frame k may seek
        stream.bit_rate = 2_000_000
        for arr in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")))
        container.mux(stream.encode())
    return path


def _save(arr: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def write_ucsd(root: Path, n_train_clips=2, n_test_clips=2, n_frames=5, anomalous=(2, 3)) -> Path:
    """UCSDped1|UCSDped2/{Train,Test}/<Clip>/<frame>.tif with Test/<Clip>_gt/<frame>.bmp masks (0/255, 1 channel)."""
    for sub in ("UCSDped1", "UCSDped2"):
        for c in range(1, n_train_clips + 1):
            for k in range(n_frames):
                _save(frame(sub, 10 * c + k, False)[0], root / sub / "Train" / f"Train{c:03d}" / f"{k + 1:03d}.tif")
        for c in range(1, n_test_clips + 1):
            for k in range(n_frames):
                img, mask = frame(sub, 100 * c + k, k in anomalous)
                _save(img, root / sub / "Test" / f"Test{c:03d}" / f"{k + 1:03d}.tif")
                _save(mask.astype(np.uint8) * 255, root / sub / "Test" / f"Test{c:03d}_gt" / f"{k + 1:03d}.bmp")
    return root


def write_avenue(root: Path, n_train=2, n_test=2, n_frames=6, anomalous=(3, 4)) -> tuple[Path, dict]:
    """training_videos/NN.avi, testing_videos/NN.avi, ground_truth_demo/testing_label_mask/N_label.mat."""
    import scipy.io

    written = {}
    for v in range(1, n_train + 1):
        write_video(root / "training_videos" / f"{v:02d}.avi", [frame("avenue", 10 * v + k, False)[0]
                                                                 for k in range(n_frames)])
    for v in range(1, n_test + 1):
        pairs = [frame("avenue", 100 * v + k, k in anomalous) for k in range(n_frames)]
        write_video(root / "testing_videos" / f"{v:02d}.avi", [p[0] for p in pairs])
        cells = np.empty((1, n_frames), dtype=object)  # a MATLAB cell array, as the published files hold
        for k, (_, mask) in enumerate(pairs):
            cells[0, k] = mask.astype(np.uint8)
        mat = root / "ground_truth_demo" / "testing_label_mask" / f"{v}_label.mat"
        mat.parent.mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(mat, {"volLabel": cells})
        written[f"{v:02d}"] = pairs
    return root, written


def write_shanghaitech(root: Path, scenes=SCENES, n_train=2, n_frames=6, anomalous=(2, 3, 4)) -> Path:
    """training/videos/<scene>_<clip>.avi, testing/frames/<scene>_<clip>/<frame>.jpg, test_frame_mask and
    test_pixel_mask .npy files (frame labels; frames x H x W masks)."""
    for s in scenes:
        for c in range(1, n_train + 1):
            write_video(root / "training" / "videos" / f"{s}_{c:03d}.avi",
                        [frame(s, 10 * c + k, False)[0] for k in range(n_frames)])
        clip = f"{s}_{14:04d}"
        pairs = [frame(s, 200 + k, k in anomalous) for k in range(n_frames)]
        for k, (img, _) in enumerate(pairs):
            _save(img, root / "testing" / "frames" / clip / f"{k:03d}.jpg")
        for sub, arr in (("test_frame_mask", np.array([int(k in anomalous) for k in range(n_frames)])),
                         ("test_pixel_mask", np.stack([m for _, m in pairs]).astype(np.uint8))):
            (root / "testing" / sub).mkdir(parents=True, exist_ok=True)
            np.save(root / "testing" / sub / f"{clip}.npy", arr)
    return root


@pytest.fixture(scope="session")
def video_roots(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("video_datasets")
    avenue, written = write_avenue(base / "avenue")
    return {"ucsdped": write_ucsd(base / "UCSD_Anomaly_Dataset.v1p2"), "avenue": avenue, "avenue_masks": written,
            "shanghaitech": write_shanghaitech(base / "shanghaitech")}


def _resized(mask: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)) > 0


# --------------------------------------------------------------------------- readers


def test_ucsd_reader_labels_frames_by_their_masks(video_roots):
    stream = load_stream("ucsdped", video_roots["ucsdped"], image_size=V)
    assert stream.names == ["UCSDped1", "UCSDped2"]
    for task in stream:
        assert (len(task.train), len(task.test)) == (2 * 5, 2 * 5)
        assert task.train.labels.sum() == 0
        assert task.test.labels.tolist() == [0, 0, 1, 1, 0] * 2
        for s in task.test.samples:
            assert (s.mask_path is not None) == bool(s.label)
            if s.label:
                assert s.mask_path == s.image_path.parent.with_name(s.image_path.parent.name + "_gt") / \
                    f"{s.image_path.stem}.bmp"
        masks = task.test.masks()
        assert masks[task.test.labels == 1].any(axis=(1, 2)).all() and not masks[task.test.labels == 0].any()


def test_ucsd_clip_without_masks_takes_frame_labels_from_the_m_file(tmp_path):
    root = write_ucsd(tmp_path / "ucsd", n_test_clips=2)
    for gt in (root / "UCSDped1" / "Test" / "Test002_gt").iterdir():
        gt.unlink()
    (root / "UCSDped1" / "Test" / "Test002_gt").rmdir()
    with pytest.raises(DatasetLayoutError, match="Test002 has no ground truth"):
        load_stream("ucsdped", root, categories=["UCSDped1"], image_size=V)
    (root / "UCSDped1" / "Test" / "UCSDped1.m").write_text(
        "TestVideoFile = {};\n% Test001\nTestVideoFile{end+1}.gt_frame = [3:4];\n"
        "% Test002\nTestVideoFile{end+1}.gt_frame = [1, 4:5];\n")
    test = load_stream("ucsdped", root, categories=["UCSDped1"], image_size=V)[0].test
    assert test.labels.tolist() == [0, 0, 1, 1, 0] + [1, 0, 0, 1, 1]
    assert [s.mask_path is None for s in test.samples if s.label] == [False, False, True, True, True]
    assert not test.has_pixel_gt  # some anomalous frames have no mask: pixel metrics are NaN, not wrong


def test_avenue_frames_are_decoded_lazily_with_the_mat_masks(video_roots):
    task = load_stream("avenue", video_roots["avenue"], image_size=V)[0]
    assert task.name == "avenue" and (len(task.train), len(task.test)) == (12, 12)
    assert all(is_frame_ref(s.image_path) for s in task.train.samples + task.test.samples)
    assert task.test.labels.tolist() == [0, 0, 0, 1, 1, 0] * 2
    masks = task.test.masks()
    for s, mask in zip(task.test.samples, masks, strict=True):
        video, k = parse_ref(s.image_path)
        written_image, written_mask = video_roots["avenue_masks"][video.stem][k]
        assert np.array_equal(mask, written_mask & bool(s.label))
        decoded = read_frame(video, k).astype(float)
        assert np.abs(decoded - written_image).mean() < 12  # lossy MPEG-4, but the same frame
    item = task.test[3]
    assert item["image"].shape == (3, V, V) and item["gt_label"] == 1 and item["gt_mask"].any()


def test_avenue_split_by_clip_gives_one_task_per_group_of_clips(video_roots):
    stream = load_stream("avenue:tasks=2", video_roots["avenue"], image_size=V)
    assert stream.names == ["part1", "part2"]
    for task, clip in zip(stream, ("01.avi", "02.avi"), strict=True):
        assert {parse_ref(s.image_path)[0].name for s in task.train.samples + task.test.samples} == {clip}


def test_shanghaitech_scenes_are_tasks_with_frame_labels_and_pixel_masks(video_roots):
    stream = load_stream("shanghaitech", video_roots["shanghaitech"], image_size=V)
    assert stream.names == list(SCENES)
    for task in stream:
        assert len(task.train) == 12 and all(is_frame_ref(s.image_path) for s in task.train.samples)
        assert task.test.labels.tolist() == [0, 0, 1, 1, 1, 0]
        assert [s.mask_path is not None for s in task.test.samples] == [False, False, True, True, True, False]
        assert task.test.has_pixel_gt
        masks = task.test.masks()
        for k, mask in enumerate(masks):
            assert np.array_equal(mask, _resized(frame(task.name, 200 + k, k in (2, 3, 4))[1], V))


def test_frame_stride_and_frames_per_clip_choose_frames_per_clip(video_roots):
    task = load_stream("shanghaitech:frame_stride=2", video_roots["shanghaitech"], categories=["01"], image_size=V)[0]
    assert [parse_ref(s.image_path)[1] for s in task.train.samples] == [0, 2, 4] * 2
    assert [s.image_path.name for s in task.test.samples] == ["000.jpg", "002.jpg", "004.jpg"]
    task = load_stream("shanghaitech:frames_per_clip=3", video_roots["shanghaitech"], categories=["01"],
                       image_size=V)[0]
    assert [parse_ref(s.image_path)[1] for s in task.train.samples] == [0, 2, 5] * 2
    with pytest.raises(ValueError, match="frame_stride=N, frames_per_clip=N"):
        load_stream("shanghaitech:stride=2", video_roots["shanghaitech"])


def test_video_datasets_chain_like_image_datasets(video_roots):
    stream = load_stream("ucsdped+avenue", [video_roots["ucsdped"], video_roots["avenue"]], image_size=V)
    assert stream.names == ["ucsdped/UCSDped1", "ucsdped/UCSDped2", "avenue"]


# --------------------------------------------------------------------------- bad input


def test_a_video_that_cannot_be_decoded_is_one_error_naming_it(tmp_path):
    root = write_shanghaitech(tmp_path / "sht", scenes=("01",))
    bad = root / "training" / "videos" / "01_002.avi"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00AVI LIST" + bytes(200))
    with pytest.raises(DatasetLayoutError, match=r"01_002\.avi") as err:
        load_stream("shanghaitech", root, image_size=V)
    assert "--skip-bad" in str(err.value) and "ShanghaiTech Campus layout" in str(err.value)
    task = load_stream("shanghaitech", root, image_size=V, skip_bad=True)[0]
    assert {parse_ref(s.image_path)[0].name for s in task.train.samples} == {"01_001.avi"}


@pytest.mark.parametrize("which", ["test_frame_mask", "test_pixel_mask"])
def test_a_frame_mask_of_the_wrong_length_is_one_error_naming_it(tmp_path, which):
    root = write_shanghaitech(tmp_path / "sht", scenes=("01",))
    path = root / "testing" / which / "01_0014.npy"
    np.save(path, np.load(path)[:-1])
    with pytest.raises(DatasetLayoutError, match=rf"{which}/01_0014\.npy .*5 .*6 frames") as err:
        load_stream("shanghaitech", root, image_size=V)
    assert str(err.value).count("01_0014.npy") >= 1


def test_an_avenue_mat_mask_of_the_wrong_length_is_one_error_naming_it(tmp_path):
    import scipy.io

    root, _ = write_avenue(tmp_path / "avenue", n_test=1)
    mat = root / "ground_truth_demo" / "testing_label_mask" / "1_label.mat"
    cells = scipy.io.loadmat(mat)["volLabel"][:, :-2]
    scipy.io.savemat(mat, {"volLabel": cells})
    with pytest.raises(DatasetLayoutError, match=r"1_label\.mat has 4 frames but video .*01\.avi has 6 frames"):
        load_stream("avenue", root, image_size=V)


def test_a_frame_that_fails_to_decode_later_names_the_video(tmp_path):
    root, _ = write_avenue(tmp_path / "avenue", n_test=1)
    task = load_stream("avenue", root, image_size=V)[0]
    video = root / "training_videos" / "01.avi"
    video.write_bytes(video.read_bytes()[:300])  # the file changed after the stream was built
    with pytest.raises(DatasetLayoutError, match=r"01\.avi"):
        ImageSet([s for s in task.train.samples if parse_ref(s.image_path) == (video, 5)], V)[0]


def test_example_grids_draw_frames_of_videos(video_roots, tmp_path):
    from cl_iad.visualize import example_grid, save_examples

    task = load_stream("avenue", video_roots["avenue"], image_size=V)[0]
    sample = next(s for s in task.test.samples if s.label)
    for step in range(2):
        save_examples(tmp_path, step, 0, task.name, [str(sample.image_path)], np.random.rand(1, 16, 16),
                      np.zeros((1, 16, 16), dtype=bool))
    assert Image.open(example_grid(tmp_path)).size[0] > 0


# --------------------------------------------------------------------------- end to end


def _run(stream, tmp_path, cache, metrics):
    """A naive PatchCore run (few metrics: each one costs two plots, most of a tiny run's time)."""
    from cl_iad.runner import run
    from cl_iad.strategies import Strategy, build_model

    strategy = Strategy(build_model("patchcore"), "naive", cache=cache)
    return run(strategy, stream, tmp_path, wandb="off", progress=False, checkpoint=False, metrics=metrics)


def test_a_three_scene_shanghaitech_stream_runs_end_to_end(video_roots, tmp_path, shared_cache):
    stream = load_stream("shanghaitech", video_roots["shanghaitech"], image_size=64)
    result = _run(stream, tmp_path, shared_cache, ("image_auroc", "pixel_auroc", "pro", "image_aupr"))
    R = result.matrices["image_auroc"]
    assert list(R.index) == list(SCENES) and R.shape == (3, 3)
    for metric in ("image_auroc", "pixel_auroc", "pro", "image_aupr"):
        assert np.isfinite(result.matrices[metric].to_numpy()).all(), metric
    assert np.diag(R.to_numpy()).mean() > 0.9  # each scene's bright squares are found right after training on it
    assert math.isfinite(result.summary["image_auroc"]["fm"])
    assert (result.run_dir / "plots" / "examples_grid.png").is_file()  # drawn from the scenes' test frames


def test_a_ucsd_ped1_to_ped2_stream_runs_end_to_end(video_roots, tmp_path, shared_cache):
    stream = load_stream("ucsdped", video_roots["ucsdped"], image_size=64)
    result = _run(stream, tmp_path, shared_cache, ("image_auroc", "pixel_auroc"))
    assert list(result.matrices["image_auroc"].index) == ["UCSDped1", "UCSDped2"]
    for metric in ("image_auroc", "pixel_auroc"):
        assert np.isfinite(result.matrices[metric].to_numpy()).all(), metric
