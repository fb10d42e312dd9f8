"""Video anomaly datasets as continual streams: UCSD Pedestrian, CUHK Avenue, ShanghaiTech Campus.

Each camera or scene is a task, and every frame is an image to the models and the runner: a
frame of a video file is a frame reference (:mod:`.frames`), decoded when it is loaded, and a
frame of a folder of images is that image. Training frames are all normal, so a video task has
the same contract as an image task, and frame-level AUROC and AUPR are the image metrics over
frames; pixel AUROC and PRO use the pixel masks where the dataset has them.

The layouts and label semantics are anomalib 2.7's (``anomalib.data.datasets.video``):

* **UCSD Pedestrian** (``ucsdped``; tasks ``UCSDped1``, ``UCSDped2``): ``<root>/UCSDped1/Train/
  Train001/001.tif``, ``<root>/UCSDped1/Test/Test001/001.tif`` and the masks
  ``Test/Test001_gt/001.bmp``; a frame is anomalous when its mask has an anomalous pixel. Masks are
  paired with frames by name (anomalib pairs by sorted position). A test clip without a ``_gt``
  folder (UCSDped1 ships masks for 10 of its 36 test clips) takes its frame labels from the
  ``gt_frame`` ranges of ``Test/UCSDped1.m``; its anomalous frames then have no mask, so the
  task's pixel metrics are NaN (anomalib cannot read such clips at all).
* **CUHK Avenue** (``avenue``; one task, or ``avenue:tasks=N`` for N tasks of consecutive clips):
  ``training_videos/01.avi``, ``testing_videos/01.avi`` and the masks
  ``ground_truth_demo/testing_label_mask/1_label.mat`` (leading zeros dropped, as anomalib does),
  whose ``volLabel`` cell array holds one mask per frame.
* **ShanghaiTech Campus** (``shanghaitech``; tasks ``01`` .. ``13``, one per scene):
  ``training/videos/01_001.avi`` (anomalib's re-encoded copy in ``training/converted_videos/`` is
  read instead when it is there), ``testing/frames/01_0014/000.jpg``, frame labels
  ``testing/test_frame_mask/01_0014.npy`` (the published labels; anomalib derives them from the
  pixel masks, which agree) and pixel masks ``testing/test_pixel_mask/01_0014.npy`` (frames, H, W).

Options, given after the dataset name (``--dataset shanghaitech:frame_stride=5,frames_per_clip=40``):
``frame_stride`` (every k-th frame of each clip, default 1), ``frames_per_clip`` (at most this many
frames of each clip, evenly spaced after the stride) and, for Avenue, ``tasks``. The frame size is
the stream's ``image_size``.

Files are checked when the stream is built: every video is opened and its first frame decoded,
and every mask volume's length and frame size are compared with its clip's, so a broken download
fails with one :class:`~.base.DatasetLayoutError` naming the file (or is skipped with ``skip_bad``).
This module imports no other reader; :mod:`.datasets` registers these three.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
from PIL import Image

from .base import Sample
from .frames import FrameError, frame_ref, mat_frame_labels, probe_masks, probe_video

log = logging.getLogger(__name__)

VIDEO_OPTIONS = ("frame_stride", "frames_per_clip")
UCSD_CATEGORIES = ("UCSDped1", "UCSDped2")
SHANGHAITECH_SCENES = tuple(f"{i:02d}" for i in range(1, 14))
_FRAME_SUFFIXES = {".tif", ".tiff", ".jpg", ".jpeg", ".png", ".bmp"}


# --------------------------------------------------------------------------- shared


def select_frames(n_frames: int, spec) -> list[int]:
    """Indices of the frames a clip of `n_frames` contributes under the spec's frame options."""
    stride = spec.option("frame_stride", 1)
    per_clip = spec.option("frames_per_clip", None)
    indices = list(range(0, n_frames, stride))
    if per_clip is not None and len(indices) > per_clip:
        picks = np.linspace(0, len(indices) - 1, per_clip).round().astype(int)
        indices = [indices[k] for k in sorted(set(picks.tolist()))]
    return indices


def _natural(path: Path) -> tuple:
    """Sort key that puts 2.jpg before 10.jpg (frame numbers are not always zero-padded)."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name))


def _frames_in(folder: Path, suffixes: set[str] | None = None) -> list[Path]:
    if not folder.is_dir():
        return []
    suffixes = suffixes or _FRAME_SUFFIXES
    return sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes
                   and not p.name.startswith(".")), key=_natural)


def _videos_in(folder: Path) -> list[Path]:
    from .frames import VIDEO_SUFFIXES

    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES
                   and not p.name.startswith(".")), key=_natural)


def _require_dir(path: Path, spec, what: str) -> None:
    if not path.is_dir():
        raise spec.error(f"{what} {path} is missing.")


def _video_frames(video: Path, category: str, spec, bad) -> list[Sample] | None:
    """The selected frames of a training video as samples; None (reported) when it cannot be decoded."""
    try:
        info = probe_video(video)
    except FrameError as exc:
        bad.report(spec, video, f"{exc}")
        return None
    return [Sample(frame_ref(video, k), 0, category) for k in select_frames(info.n_frames, spec)]


def _image_size(path: Path) -> tuple[int, int] | None:
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError, SyntaxError):
        return None  # the file check of load_stream reports it with the others


# --------------------------------------------------------------------------- UCSD Pedestrian


def discover_ucsd(root: Path, spec) -> list[str]:
    """The UCSDped1/UCSDped2 folders of `root` (any folder with Train/ and Test/ counts)."""
    if not root.is_dir():
        raise spec.error(f"dataset root {root} does not exist or is not a folder.")
    found = sorted(p.name for p in root.iterdir() if (p / "Train").is_dir() and (p / "Test").is_dir())
    if not found:
        hint = ""
        if (root / "Train").is_dir():
            hint = f" {root} itself looks like one of them: pass its parent {root.parent} as --root."
        elif (root / "UCSD_Anomaly_Dataset.v1p2").is_dir():
            hint = f" Pass {root / 'UCSD_Anomaly_Dataset.v1p2'} as --root."
        raise spec.error(f"no UCSDped1/ or UCSDped2/ folder with Train/ and Test/ under {root}.{hint}")
    return found


def _clips(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.endswith("_gt")
                   and _frames_in(p, {".tif", ".tiff"})), key=_natural)


def read_ucsd(root: Path, category: str, spec, bad) -> tuple[list[Sample], list[Sample]]:
    """Train and test frames of one UCSD Pedestrian subset; labels from the masks (or the .m file)."""
    base = root / category
    _require_dir(base / "Train", spec, f"category {category!r}: training folder")
    _require_dir(base / "Test", spec, f"category {category!r}: test folder")
    train = []
    for clip in _clips(base / "Train"):
        frames = _frames_in(clip, {".tif", ".tiff"})
        train += [Sample(frames[k], 0, category) for k in select_frames(len(frames), spec)]
    if not train:
        raise spec.error(f"no training clip (a folder of .tif frames) in {base / 'Train'}.")
    clips = _clips(base / "Test")
    ranges = _ucsd_frame_ranges(base / "Test", category, clips, spec) if any(
        not (c.parent / f"{c.name}_gt").is_dir() for c in clips) else {}
    test = []
    for clip in clips:
        test += _ucsd_test_clip(clip, category, ranges.get(clip.name), spec, bad)
    if not test:
        raise spec.error(f"no test clip (a folder of .tif frames) in {base / 'Test'}.")
    return train, test


def _ucsd_test_clip(clip: Path, category: str, gt_frames: set[int] | None, spec, bad) -> list[Sample]:
    frames = _frames_in(clip, {".tif", ".tiff"})
    gt = clip.parent / f"{clip.name}_gt"
    out = []
    if not gt.is_dir():
        if gt_frames is None:
            bad.report(spec, clip, f"test clip {clip} has no ground truth: expected the folder {gt} with one .bmp "
                                   f"mask per frame, or its frame ranges in {clip.parent / (category + '.m')}.")
            return []
        for k in select_frames(len(frames), spec):
            anomalous = k + 1 in gt_frames  # the .m file counts frames from 1
            out.append(Sample(frames[k], int(anomalous), category, clip.name if anomalous else "good"))
        return out
    for k in select_frames(len(frames), spec):
        mask = gt / f"{frames[k].stem}.bmp"
        if not mask.is_file():
            bad.report(spec, frames[k], f"test frame {frames[k]} has no mask: expected {mask}.")
            continue
        try:
            with Image.open(mask) as im:
                anomalous = bool(np.asarray(im).any())
        except (OSError, ValueError, SyntaxError) as exc:
            bad.report(spec, mask, f"cannot read mask {mask}: {exc}.")
            continue
        out.append(Sample(frames[k], 0, category) if not anomalous
                   else Sample(frames[k], 1, category, clip.name, mask))
    return out


def _ucsd_frame_ranges(test_dir: Path, category: str, clips: list[Path], spec) -> dict[str, set[int]]:
    """Frame-level ground truth of each test clip from ``Test/<category>.m`` (``gt_frame = [60:152];``)."""
    path = test_dir / f"{category}.m"
    if not path.is_file():
        return {}
    entries = re.findall(r"gt_frame\s*=\s*\[([^\]]*)\]", path.read_text(errors="replace", encoding="utf-8"))
    if len(entries) != len(clips):
        raise spec.error(f"{path} lists {len(entries)} gt_frame entries but {test_dir} holds {len(clips)} test "
                         "clips; each test clip needs one entry, in clip order.")
    out = {}
    for clip, text in zip(clips, entries, strict=True):
        frames: set[int] = set()
        for a, b in re.findall(r"(\d+)\s*(?::\s*(\d+))?", text):
            frames.update(range(int(a), int(b or a) + 1))
        out[clip.name] = frames
    return out


# --------------------------------------------------------------------------- CUHK Avenue

AVENUE_MASKS = Path("ground_truth_demo") / "testing_label_mask"


def _avenue_parts(spec) -> int:
    return spec.option("tasks", 1)


def discover_avenue(root: Path, spec) -> list[str]:
    """``avenue``, or ``part1`` .. ``partN`` with the ``tasks`` option."""
    if not root.is_dir():
        raise spec.error(f"dataset root {root} does not exist or is not a folder.")
    if not _videos_in(root / "training_videos"):
        hint = ""
        nested = [p for p in root.iterdir() if p.is_dir() and (p / "training_videos").is_dir()]
        if nested:
            hint = f" The videos are in {nested[0]}: pass it as --root."
        raise spec.error(f"no video in {root / 'training_videos'}.{hint}")
    parts = _avenue_parts(spec)
    return ["avenue"] if parts == 1 else [f"part{i}" for i in range(1, parts + 1)]


def _avenue_share(videos: list[Path], category: str, spec) -> list[Path]:
    """The consecutive clips of one part (the whole list for the single task ``avenue``)."""
    parts = _avenue_parts(spec)
    names = ["avenue"] if parts == 1 else [f"part{i}" for i in range(1, parts + 1)]
    if category not in names:
        raise spec.error(f"no task {category!r}; with tasks={parts} the tasks are {', '.join(names)}.")
    if len(videos) < parts:
        raise spec.error(f"tasks={parts} needs at least {parts} videos in each of training_videos/ and "
                         f"testing_videos/; found {len(videos)}.")
    return [videos[k] for k in np.array_split(np.arange(len(videos)), parts)[names.index(category)]]


def read_avenue(root: Path, category: str, spec, bad) -> tuple[list[Sample], list[Sample]]:
    """Train and test frames of Avenue (or of one part of its clips); labels from the .mat masks."""
    train = []
    for video in _avenue_share(_videos_in(root / "training_videos"), category, spec):
        train += _video_frames(video, category, spec, bad) or []
    tests = _videos_in(root / "testing_videos")
    if not tests:
        raise spec.error(f"no video in {root / 'testing_videos'}.")
    test = []
    for video in _avenue_share(tests, category, spec):
        test += _avenue_test_video(root, video, category, spec, bad)
    return train, test


def _avenue_test_video(root: Path, video: Path, category: str, spec, bad) -> list[Sample]:
    masks = root / AVENUE_MASKS / f"{video.stem.lstrip('0') or '0'}_label.mat"
    if not masks.is_file():
        bad.report(spec, video, f"test video {video} has no masks: expected {masks}.")
        return []
    try:
        info = probe_video(video)
        volume = probe_masks(masks)
        labels = mat_frame_labels(masks)
    except FrameError as exc:
        bad.report(spec, video, f"{exc}")
        return []
    problem = _volume_mismatch(volume, info.n_frames, (info.width, info.height), f"video {video}")
    if problem:
        bad.report(spec, masks, problem)
        return []
    out = []
    for k in select_frames(info.n_frames, spec):
        if labels[k]:
            out.append(Sample(frame_ref(video, k), 1, category, video.stem, frame_ref(masks, k)))
        else:
            out.append(Sample(frame_ref(video, k), 0, category))
    return out


def _volume_mismatch(volume, n_frames: int, size: tuple[int, int] | None, clip: str) -> str | None:
    """Why a mask volume does not fit its clip (frame count, frame size), or None."""
    if volume.n_frames != n_frames:
        return (f"mask file {volume.path} has {volume.n_frames} frames but {clip} has {n_frames} frames; a frame "
                "mask needs one entry per frame.")
    if size is not None and (volume.width, volume.height) != size:
        return (f"mask file {volume.path} is {volume.width}x{volume.height} but the frames of {clip} are "
                f"{size[0]}x{size[1]}; a mask must match its frame pixel for pixel.")
    return None


# --------------------------------------------------------------------------- ShanghaiTech Campus

SHT_TRAIN = Path("training") / "videos"
SHT_CONVERTED = Path("training") / "converted_videos"
SHT_FRAMES = Path("testing") / "frames"
SHT_FRAME_MASK = Path("testing") / "test_frame_mask"
SHT_PIXEL_MASK = Path("testing") / "test_pixel_mask"


def _scene(name: str) -> str:
    return name.split("_", 1)[0]


def discover_shanghaitech(root: Path, spec) -> list[str]:
    """The scenes with training videos and test clips; scenes with only one of them are left out with a warning."""
    if not root.is_dir():
        raise spec.error(f"dataset root {root} does not exist or is not a folder.")
    train = {_scene(v.stem) for v in _videos_in(root / SHT_TRAIN) + _videos_in(root / SHT_CONVERTED)}
    if not train:
        hint = ""
        if (root / "shanghaitech" / "training").is_dir():
            hint = f" Pass {root / 'shanghaitech'} as --root."
        raise spec.error(f"no <scene>_<clip>.avi video in {root / SHT_TRAIN}.{hint}")
    frames_dir = root / SHT_FRAMES
    test = {_scene(p.name) for p in frames_dir.iterdir() if p.is_dir()} if frames_dir.is_dir() else set()
    if not test:
        raise spec.error(f"no test clip folder (<scene>_<clip>/ of .jpg frames) in {frames_dir}.")
    lonely = sorted(train ^ test)
    if lonely:
        log.warning("ShanghaiTech scenes %s have training videos or test clips but not both; they are left out",
                    ", ".join(lonely))
    return sorted(train & test)


def read_shanghaitech(root: Path, category: str, spec, bad) -> tuple[list[Sample], list[Sample]]:
    """Train frames (from the videos) and test frames (from the jpg folders) of one scene."""
    names = {v.name: v for v in _videos_in(root / SHT_TRAIN) if _scene(v.stem) == category}
    names.update({v.name: v for v in _videos_in(root / SHT_CONVERTED) if _scene(v.stem) == category})
    if not names:
        raise spec.error(f"scene {category!r} has no training video {root / SHT_TRAIN}/{category}_*.avi.")
    train = []
    for name in sorted(names, key=lambda n: _natural(Path(n))):
        train += _video_frames(names[name], category, spec, bad) or []
    clips = sorted((p for p in (root / SHT_FRAMES).glob(f"{category}_*") if p.is_dir()), key=_natural)
    test = []
    for clip in clips:
        test += _shanghaitech_clip(root, clip, category, spec, bad)
    if not clips:
        raise spec.error(f"scene {category!r} has no test clip {root / SHT_FRAMES}/{category}_*/.")
    return train, test


def _shanghaitech_clip(root: Path, clip: Path, category: str, spec, bad) -> list[Sample]:
    frames = _frames_in(clip, {".jpg", ".jpeg", ".png"})
    if not frames:
        return []
    labels_path = root / SHT_FRAME_MASK / f"{clip.name}.npy"
    pixel_path = root / SHT_PIXEL_MASK / f"{clip.name}.npy"
    pixel = None
    try:
        if pixel_path.is_file():
            pixel = probe_masks(pixel_path)
            problem = _volume_mismatch(pixel, len(frames), _image_size(frames[0]), f"test clip {clip}")
            if problem:
                bad.report(spec, pixel_path, problem)
                return []
        labels = _shanghaitech_labels(labels_path, pixel_path if pixel else None, len(frames), clip, spec, bad)
    except FrameError as exc:
        bad.report(spec, clip, f"{exc}")
        return []
    if labels is None:
        return []
    out = []
    for k in select_frames(len(frames), spec):
        if labels[k]:
            mask = frame_ref(pixel_path, k) if pixel is not None else None
            out.append(Sample(frames[k], 1, category, clip.name, mask))
        else:
            out.append(Sample(frames[k], 0, category))
    return out


def _shanghaitech_labels(labels_path: Path, pixel_path: Path | None, n_frames: int, clip: Path, spec,
                         bad) -> np.ndarray | None:
    """The clip's frame labels: test_frame_mask/<clip>.npy, else derived from the pixel masks."""
    if labels_path.is_file():
        try:
            labels = np.load(labels_path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            bad.report(spec, labels_path, f"cannot read frame mask {labels_path}: {exc}.")
            return None
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) != n_frames:
            found = f"{len(labels)} labels" if labels.ndim == 1 else f"shape {labels.shape}"
            bad.report(spec, labels_path, f"frame mask {labels_path} has {found} but test clip {clip} has "
                                          f"{n_frames} frames; it needs one label (0 or 1) per frame.")
            return None
        return labels > 0
    if pixel_path is None:
        bad.report(spec, clip, f"test clip {clip} has no labels: expected {labels_path} (or the pixel masks "
                               f"{labels_path.parent.parent / SHT_PIXEL_MASK.name / labels_path.name}).")
        return None
    volume = np.load(pixel_path, mmap_mode="r", allow_pickle=False)
    return np.array([bool(np.asarray(volume[k]).any()) for k in range(volume.shape[0])])


# --------------------------------------------------------------------------- layouts shown in errors


def _tree(*lines: str) -> str:
    return "\n".join(f"  {line}" for line in lines)


OPTIONS_LINE = ("options: <name>:frame_stride=K,frames_per_clip=N (every K-th frame, at most N per clip; "
                "needs pip install 'cl_iad[video]' for .avi files)")
UCSD_LAYOUT = _tree(
    "<root>/UCSDped1/Train/Train001/001.tif ...",
    "<root>/UCSDped1/Test/Test001/001.tif ...",
    "<root>/UCSDped1/Test/Test001_gt/001.bmp ...   (a mask per frame; or frame ranges in Test/UCSDped1.m)",
    "<root>/UCSDped2/... likewise; tasks: UCSDped1, UCSDped2",
    OPTIONS_LINE)
AVENUE_LAYOUT = _tree(
    "<root>/training_videos/01.avi ... 16.avi",
    "<root>/testing_videos/01.avi ... 21.avi",
    "<root>/ground_truth_demo/testing_label_mask/1_label.mat ... 21_label.mat   ('volLabel': one mask per frame)",
    "one task 'avenue', or avenue:tasks=N for N tasks of consecutive clips",
    OPTIONS_LINE)
SHANGHAITECH_LAYOUT = _tree(
    "<root>/training/videos/01_001.avi ...   (or anomalib's training/converted_videos/)",
    "<root>/testing/frames/01_0014/000.jpg ...",
    "<root>/testing/test_frame_mask/01_0014.npy   (one 0/1 label per frame)",
    "<root>/testing/test_pixel_mask/01_0014.npy   (frames x height x width)",
    "one task per scene: 01 .. 13",
    OPTIONS_LINE)
