"""Frame references: one frame of a video, or one frame's mask in a mask volume, named by a path.

A video dataset has far too many frames to extract or hold in memory, so a :class:`~.base.Sample`
points at a frame with a *virtual* path: the container file with the frame index as a child,
``.../01.avi/000123.frame`` (index 123, counted from 0 in presentation order, as anomalib's
video clips count). The same form names a frame's mask inside a mask volume:
``.../test_pixel_mask/01_0014.npy/000123.frame`` (ShanghaiTech) or
``.../1_label.mat/000123.frame`` (CUHK Avenue's ``volLabel`` cell array).

Paths keep samples plain strings, so checkpoints, saved models, the feature cache and replay
buffers work unchanged: :func:`open_image` opens a file or a frame reference alike, and
:func:`source_file` names the file on disk (for ``os.stat``).

Frames are decoded lazily with PyAV (``pip install 'cl_iad[video]'``): one open container per
thread, read forward while requests move forward, seeking to the nearest key frame otherwise.
Mask volumes are read per frame (``.npy`` memory-mapped; a ``.mat`` is loaded whole by scipy, so
the last two are kept, bit-packed). This module imports no other part of cl_iad but the errors.
"""

from __future__ import annotations

import functools
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

VIDEO_SUFFIXES = frozenset({".avi", ".mp4", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".webm", ".wmv"})
MASK_VOLUME_SUFFIXES = frozenset({".npy", ".mat"})
_FRAME_NAME = re.compile(r"(\d+)\.frame")
# frames decoded forward, rather than seeking, when a request is at most this far past the last one
_FORWARD_WINDOW = 48


class FrameError(OSError):
    """A video or mask volume cannot be read at a frame; the message names the file and frame."""


# --------------------------------------------------------------------------- references


def frame_ref(file: Path | str, index: int) -> Path:
    """The path naming frame `index` (from 0) of a video or mask volume `file`."""
    return Path(file) / f"{int(index):06d}.frame"


def parse_ref(path: Path | str) -> tuple[Path, int] | None:
    """(container file, frame index) of a frame reference, else None (an ordinary file)."""
    path = Path(path)
    match = _FRAME_NAME.fullmatch(path.name)
    if match is None or path.parent.suffix.lower() not in VIDEO_SUFFIXES | MASK_VOLUME_SUFFIXES:
        return None
    return path.parent, int(match.group(1))


def is_frame_ref(path: Path | str | None) -> bool:
    """Whether `path` names a frame inside a video or mask volume."""
    return path is not None and parse_ref(path) is not None


def source_file(path: Path | str) -> Path:
    """The file on disk behind `path`: the container of a frame reference, else `path` itself."""
    ref = parse_ref(path)
    return Path(path) if ref is None else ref[0]


def open_image(path: Path | str) -> Image.Image:
    """A PIL image of a file (``Image.open``, lazy) or of a frame reference.

    Video frames come back as RGB; frames of mask volumes as mode "L" with anomalous pixels 255.
    Use it as a context manager, like ``Image.open``. A frame that cannot be read raises
    :class:`FrameError` (an ``OSError``) naming the file and the frame.
    """
    ref = parse_ref(path)
    if ref is None:
        return Image.open(path)
    file, index = ref
    if file.suffix.lower() in VIDEO_SUFFIXES:
        return Image.fromarray(read_frame(file, index))
    return Image.fromarray(read_mask_frame(file, index).astype(np.uint8) * 255)


# --------------------------------------------------------------------------- videos


@dataclass(frozen=True)
class VideoInfo:
    """What a video holds: its frame count and frame size (width, height)."""

    path: Path
    n_frames: int
    width: int
    height: int


def _av():
    from .._extras import require

    return require("av", "video", "reading video datasets")


def _file_key(path: Path) -> tuple[str, int, int]:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise FrameError(f"video {path} is missing or unreadable ({exc})") from exc
    return str(path), st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=256)
def _presentation_pts(key: tuple[str, int, int]) -> tuple[int, ...] | None:
    """The sorted presentation timestamps of a video's frames, read from packet headers (no decoding).

    None when some packet has no timestamp: frames are then counted by decoding.
    """
    av = _av()
    path = key[0]
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            pts = [p.pts for p in container.demux(stream) if p.size]
    except (av.error.FFmpegError, IndexError, OSError, ValueError) as exc:
        raise FrameError(f"video {path} cannot be read: {_first_line(exc)} (not a video PyAV can read, or "
                         "truncated)") from exc
    if not pts or any(p is None for p in pts) or len(set(pts)) != len(pts):
        return None
    return tuple(sorted(pts))


@dataclass
class _Open:
    """One open video of this thread, with the decoder's position."""

    key: tuple
    container: Any
    stream: Any
    pts: tuple[int, ...] | None
    frames: Any = None  # the running decode iterator
    position: int = -1  # index of the frame the iterator yielded last
    closed: bool = False

    def close(self) -> None:
        if not self.closed:
            self.container.close()
            self.closed = True


_local = threading.local()


def _open(path: Path) -> _Open:
    """This thread's open container of `path` (reopened after a fork: descriptors are not shared)."""
    key = (os.getpid(), *_file_key(path))
    current: _Open | None = getattr(_local, "video", None)
    if current is not None and current.key == key and not current.closed:
        return current
    if current is not None and current.key[0] == os.getpid():
        current.close()
    av = _av()
    pts = _presentation_pts(key[1:])
    try:
        container = av.open(str(path))
        stream = container.streams.video[0]
    except (av.error.FFmpegError, IndexError, OSError, ValueError) as exc:
        raise FrameError(f"video {path} cannot be opened: {_first_line(exc)}") from exc
    _local.video = _Open(key, container, stream, pts)
    return _local.video


def read_frame(path: Path | str, index: int) -> np.ndarray:
    """Frame `index` (from 0) of a video as an RGB uint8 array (H, W, 3), decoding only what is needed."""
    av = _av()
    path = Path(path)
    video = _open(path)
    try:
        frame = _frame_at(video, index)
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        video.close()
        raise FrameError(f"frame {index} of video {path} cannot be decoded: {_first_line(exc)}") from exc
    if frame is None:
        video.close()
        n = len(video.pts) if video.pts is not None else "fewer"
        raise FrameError(f"video {path} has no frame {index}: it decodes {n} frames (was it replaced or "
                         "truncated since the stream was built?)")
    return frame.to_ndarray(format="rgb24")


def _frame_at(video: _Open, index: int):
    """The decoded frame `index`, or None past the end."""
    if index < 0 or (video.pts is not None and index >= len(video.pts)):
        return None
    forward = video.frames is not None and video.position < index <= video.position + _FORWARD_WINDOW
    if video.pts is None:  # no timestamps: count frames from the start (or from where the decoder is)
        if not forward:
            _restart(video, 0)
        for frame in video.frames:
            video.position += 1
            if video.position == index:
                return frame
        return None
    target = video.pts[index]
    if forward:
        return _decode_to(video, target, may_restart=False)
    _restart(video, target)
    return _decode_to(video, target, may_restart=True)


def _restart(video: _Open, pts: int) -> None:
    """Seek to the key frame at or before `pts` (0: the start) and start a new decoder there."""
    if pts == 0 or video.pts is None:
        video.container.seek(0)
    else:
        video.container.seek(pts, stream=video.stream, backward=True, any_frame=False)
    video.frames, video.position = video.container.decode(video.stream), -1


def _decode_to(video: _Open, target: int, may_restart: bool):
    """Decode forward to the frame shown at `target`; a seek that landed past it decodes from the start."""
    for frame in video.frames:
        if frame.pts is None:
            raise FrameError("a decoded frame has no timestamp")
        if frame.pts > target and may_restart:
            _restart(video, 0)
            return _decode_to(video, target, may_restart=False)
        may_restart = False
        video.position = _index_of(video.pts, frame.pts)
        if frame.pts >= target:
            return frame
    return None


def _index_of(pts: tuple[int, ...], value: int) -> int:
    import bisect

    return bisect.bisect_left(pts, value)


def probe_video(path: Path | str) -> VideoInfo:
    """Frame count and size of a video; decodes its first frame to prove the file is readable.

    Raises :class:`FrameError` naming the file when it cannot be opened or decoded.
    """
    av = _av()
    path = Path(path)
    pts = _presentation_pts(_file_key(path))
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            decoded = container.decode(stream)
            first = next(decoded, None)
            if first is None:
                raise FrameError(f"video {path} holds no decodable frame")
            width, height = first.width, first.height
            n = len(pts) if pts is not None else 1 + sum(1 for _ in decoded)
    except FrameError:
        raise
    except (av.error.FFmpegError, IndexError, OSError, ValueError) as exc:
        raise FrameError(f"video {path} cannot be decoded: {_first_line(exc)}") from exc
    return VideoInfo(path, n, width, height)


# --------------------------------------------------------------------------- mask volumes


@dataclass(frozen=True)
class MaskVolume:
    """A stack of per-frame masks: its frame count and frame size (width, height)."""

    path: Path
    n_frames: int
    width: int
    height: int


def probe_masks(path: Path | str) -> MaskVolume:
    """Frame count and size of a mask volume (.npy of shape (N, H, W), or .mat with a 'volLabel' cell array)."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        arr = _npy(_file_key(path))
        if arr.ndim != 3:
            raise FrameError(f"pixel mask {path} has shape {arr.shape}; expected (frames, height, width)")
        return MaskVolume(path, arr.shape[0], arr.shape[2], arr.shape[1])
    packed, h, w = _mat(_file_key(path))
    return MaskVolume(path, packed.shape[0], w, h)


def mat_frame_labels(path: Path | str) -> np.ndarray:
    """Per-frame labels of a .mat mask volume: True where a frame's mask has an anomalous pixel."""
    packed, _, _ = _mat(_file_key(Path(path)))
    return packed.any(axis=1)


def read_mask_frame(path: Path | str, index: int) -> np.ndarray:
    """The boolean mask (H, W) of frame `index` in a mask volume."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        arr = _npy(_file_key(path))
        if not 0 <= index < arr.shape[0]:
            raise FrameError(f"pixel mask {path} has {arr.shape[0]} frames; frame {index} does not exist")
        return np.asarray(arr[index]) > 0
    packed, h, w = _mat(_file_key(path))
    if not 0 <= index < packed.shape[0]:
        raise FrameError(f"mask file {path} has {packed.shape[0]} frames; frame {index} does not exist")
    return np.unpackbits(packed[index], count=h * w).reshape(h, w).astype(bool)


@functools.lru_cache(maxsize=8)
def _npy(key: tuple[str, int, int]) -> np.ndarray:
    path = key[0]
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise FrameError(f"pixel mask {path} cannot be read as a .npy array: {_first_line(exc)}") from exc


@functools.lru_cache(maxsize=2)
def _mat(key: tuple[str, int, int]) -> tuple[np.ndarray, int, int]:
    """A .mat 'volLabel' cell array (one H x W mask per frame) as bit-packed rows (N, ceil(H*W/8))."""
    import scipy.io

    path = key[0]
    try:
        mat = scipy.io.loadmat(path)
    except (OSError, ValueError, NotImplementedError, TypeError) as exc:
        raise FrameError(f"mask file {path} cannot be read by scipy.io.loadmat: {_first_line(exc)}") from exc
    if "volLabel" not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise FrameError(f"mask file {path} has no 'volLabel' cell array (it holds {keys}); CUHK Avenue's "
                         "testing_label_mask/*_label.mat files hold one mask per frame in 'volLabel'")
    cells = np.asarray(mat["volLabel"], dtype=object).reshape(-1)
    shapes = {np.shape(m) for m in cells}
    if not len(cells) or len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise FrameError(f"mask file {path}: 'volLabel' must hold one 2-D mask per frame of one size; found "
                         f"{len(cells)} entries of shapes {sorted(shapes)[:3]}")
    h, w = next(iter(shapes))
    packed = np.stack([np.packbits(np.asarray(m).reshape(-1) > 0) for m in cells])
    return packed, h, w


def _first_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__
