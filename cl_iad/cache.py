"""Per-image backbone features, computed once per run and reused in every later evaluation.

A T-task stream evaluates every test set T times; with a frozen backbone an image's features
never change, so each test image needs one backbone pass instead of T.

The key of an entry is (model feature key, image size, file path, file size, file mtime).
The model's ``feature_key`` names the backbone, its weights, the layers and whatever else
shapes the embedding; the file's size and mtime make an edited image a new entry.

Three tiers, tried in this order on every read:

* device: features computed on an accelerator stay there (no copy back and forth between
  evaluations), up to ``max_device_mb`` (None: unbounded). Past the cap the least recently used
  entries move to host memory, into page-locked (pinned) buffers, from which the copy back to
  the GPU is asynchronous. Features computed on the CPU skip this tier.
* host memory: a dict, optionally bounded by ``max_memory_mb`` (least recently used entries are
  dropped first; with a disk store they are still on disk);
* disk (``directory=...``): one ``.npy`` per image, written atomically when computed, so large
  streams keep a small resident set and a restarted run reuses the features of the killed one.

Whichever tier an entry comes from, :meth:`FeatureCache.embeddings` returns it on the model's
device.

Each disk entry ends with a SHA-256 of its key and its bytes, so a file that is truncated, holds
another array (another shape or dtype) or was copied from another entry is detected when it is
read: it is recomputed with a warning and rewritten, never used. A disk store that cannot be
written (full, read-only) is left with one warning; the run goes on with features in memory.

Models whose backbone is trained (``frozen_backbone = False``) are never cached: their features
change every time they are fitted, so a stored copy would be stale.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from .scenarios.frames import source_file

log = logging.getLogger(__name__)

CACHE_FORMAT = 2  # bump when the stored layout or the meaning of a key changes (2: checksum trailer)
_DIGEST_BYTES = 32  # the SHA-256 trailer of every disk entry


class FeatureModel(Protocol):
    """What the cache needs from a model."""

    feature_key: str

    def extract_features(self, images: torch.Tensor) -> torch.Tensor: ...


def is_cacheable(model: object) -> bool:
    """Whether `model`'s features may be reused: only when its backbone is never trained."""
    return bool(getattr(model, "frozen_backbone", True))


def _library_tag() -> str:
    """Versions that change what a backbone computes; part of every on-disk key."""
    from importlib import metadata

    parts = [f"fmt{CACHE_FORMAT}", f"torch{torch.__version__}"]
    for name in ("anomalib", "timm"):
        try:
            parts.append(f"{name}{metadata.version(name)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{name}-none")
    return "|".join(parts)


class FeatureCache:
    """Embeddings of each image, keyed by model features, image size and file identity.

    `directory` turns on the disk store; `max_memory_mb` bounds the host-memory store (None:
    unbounded; 0: keep nothing in memory, read every hit from disk); `max_device_mb` bounds the
    features kept on an accelerator (None: unbounded; 0: move every entry to host memory).
    `enabled=False` makes a cache that stores nothing, the baseline for benchmarks.
    """

    def __init__(self, directory: Path | str | None = None, max_memory_mb: float | None = None,
                 enabled: bool = True, max_device_mb: float | None = None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.max_memory_bytes = None if max_memory_mb is None else int(max_memory_mb * 2**20)
        self.max_device_bytes = None if max_device_mb is None else int(max_device_mb * 2**20)
        self.enabled = enabled
        self._device: OrderedDict[tuple, torch.Tensor] = OrderedDict()  # on an accelerator
        self._device_bytes = 0
        self.moved_to_host = 0  # entries demoted from the device tier
        self._store: OrderedDict[tuple, torch.Tensor] = OrderedDict()  # host memory
        self._bytes = 0
        self._tag: str | None = None
        self.forward_images = 0  # images pushed through a backbone, for benchmarks
        self.disk_hits = 0
        self.corrupt_files = 0  # disk entries found damaged and recomputed
        self.disk_writable = True  # False once a write failed: features then stay in memory
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)

    # -- keys ---------------------------------------------------------------------------
    @staticmethod
    def key(model: FeatureModel, image_size: int, path: Path | str) -> tuple:
        """The cache key of one image for one model; raises if the file is missing."""
        try:
            st = os.stat(source_file(path))  # a video frame (.../clip.avi/000012.frame): its video file
        except OSError as exc:
            raise FileNotFoundError(f"image {path} is missing or unreadable ({exc}); the feature cache "
                                    "keys images by their file, so restore the file or rebuild the scenario") from exc
        return (model.feature_key, int(image_size), str(path), st.st_size, st.st_mtime_ns)

    def _disk_path(self, key: tuple) -> Path:
        if self._tag is None:
            self._tag = _library_tag()
        digest = hashlib.sha256(repr((self._tag, key)).encode()).hexdigest()[:40]
        return self.directory / digest[:2] / f"{digest}.npy"

    # -- stores -------------------------------------------------------------------------
    def _get(self, key: tuple) -> torch.Tensor | None:
        hit = self._device.get(key)
        if hit is not None:
            self._device.move_to_end(key)
            return hit
        hit = self._store.get(key)
        if hit is not None:
            self._store.move_to_end(key)
            return hit
        if self.directory is None:
            return None
        path = self._disk_path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("feature cache file %s cannot be read (%s); its features are recomputed", path, exc)
            return None
        try:
            arr = _decode(data, path.stem)
        except ValueError as exc:
            self.corrupt_files += 1
            log.warning("feature cache file %s is corrupt (%s); its features are recomputed and the file "
                        "rewritten", path, exc)
            return None
        self.disk_hits += 1
        tensor = torch.from_numpy(arr)
        self._remember_host(key, tensor)  # read into host memory; the caller moves it to the model's device
        return tensor

    def _put(self, key: tuple, tensor: torch.Tensor) -> None:
        if self.directory is not None and self.disk_writable:
            path = self._disk_path(key)
            tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp.write_bytes(_encode(tensor.cpu().numpy(), path.stem))
                os.replace(tmp, path)
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                self.disk_writable = False
                log.warning("feature cache %s cannot be written (%s); features of this run stay in memory only "
                            "(free space there, or drop --cache-dir)", self.directory, exc)
        self._remember(key, tensor)

    @staticmethod
    def _on_device(tensor: torch.Tensor) -> bool:
        """Whether `tensor` belongs in the device tier (it lives on an accelerator)."""
        return tensor.device.type != "cpu"

    @staticmethod
    def _to_host(tensor: torch.Tensor) -> torch.Tensor:
        """A host copy of a device tensor, page-locked where CUDA is present (async copies back)."""
        host = tensor.to("cpu")
        return host.pin_memory() if torch.cuda.is_available() else host

    def _remember(self, key: tuple, tensor: torch.Tensor) -> None:
        if key in self._device or key in self._store:
            return
        size = tensor.numel() * tensor.element_size()
        limit = self.max_device_bytes
        on_device = self._on_device(tensor)
        if not on_device or (limit is not None and size > limit):
            self._remember_host(key, self._to_host(tensor) if on_device else tensor)
            return
        self._device[key] = tensor
        self._device_bytes += size
        while limit is not None and self._device_bytes > limit and self._device:
            old_key, old = self._device.popitem(last=False)
            self._device_bytes -= old.numel() * old.element_size()
            self.moved_to_host += 1
            self._remember_host(old_key, self._to_host(old))

    def _remember_host(self, key: tuple, tensor: torch.Tensor) -> None:
        limit = self.max_memory_bytes
        size = tensor.numel() * tensor.element_size()
        if limit is not None and size > limit:
            return  # larger than the whole bound: served from disk (or recomputed) each time
        if key in self._store:
            return
        self._store[key] = tensor
        self._bytes += size
        while limit is not None and self._bytes > limit and self._store:
            _, old = self._store.popitem(last=False)
            self._bytes -= old.numel() * old.element_size()

    # -- the one public operation -------------------------------------------------------
    def embeddings(self, model: FeatureModel, data, batch_size: int = 16) -> torch.Tensor:
        """Embeddings (N, ...) of every image of `data` (an ImageSet), computing only the missing ones."""
        if not (self.enabled and is_cacheable(model)):
            return self._extract_all(model, data, range(len(data)), batch_size)
        keys = [self.key(model, data.image_size, s.image_path) for s in data.samples]
        found: dict[int, torch.Tensor] = {}
        todo = []
        for i, k in enumerate(keys):
            hit = self._get(k)
            if hit is None:
                todo.append(i)
            else:
                found[i] = hit
        if todo:
            fresh = self._extract_all(model, data, todo, batch_size)
            for i, row in zip(todo, fresh):
                row = row.clone()  # a row of a batch would pin the whole batch in memory
                found[i] = row
                self._put(keys[i], row)
        device = getattr(model, "device", None) or (found[0].device if not todo else fresh.device)
        # pinned host entries copy to a GPU asynchronously; the stack waits for them on the same stream
        return torch.stack([found[i].to(device, non_blocking=True) for i in range(len(keys))])

    def _extract_all(self, model: FeatureModel, data, indices, batch_size: int) -> torch.Tensor:
        # Every batch is padded to `batch_size`: CPU convolution kernels are chosen by input
        # shape, so an image's features would change in the last bits with the size of the batch
        # it happens to be in (measured: up to 9e-6 between batches of 1, 3 and 16). With one
        # fixed shape they are bit-identical whatever the other images are, which keeps cached,
        # uncached and resumed runs equal.
        out = []
        for batch in DataLoader(Subset(data, list(indices)), batch_size=batch_size, shuffle=False):
            images = batch["image"]
            n = len(images)
            if n < batch_size:
                images = torch.cat([images, images.new_zeros((batch_size - n, *images.shape[1:]))])
            emb = model.extract_features(images)[:n]
            self.forward_images += n
            out.append(emb)
        return torch.cat(out)

    def __len__(self) -> int:
        return len(self._device) + len(self._store)

    @property
    def memory_bytes(self) -> int:
        """Bytes of features held in memory now, device and host together."""
        return self._device_bytes + self._bytes

    @property
    def device_bytes(self) -> int:
        """Bytes of features held on an accelerator now."""
        return self._device_bytes

    @property
    def host_bytes(self) -> int:
        """Bytes of features held in host memory now."""
        return self._bytes


def _encode(array: np.ndarray, name: str) -> bytes:
    """`array` as ``.npy`` bytes followed by the SHA-256 of `name` (the entry's digest) and those bytes."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    data = buf.getvalue()
    return data + hashlib.sha256(name.encode() + data).digest()


def _decode(data: bytes, name: str) -> np.ndarray:
    """The array of an entry written by :func:`_encode`; ValueError if it is truncated or not that entry's."""
    body, digest = data[:-_DIGEST_BYTES], data[-_DIGEST_BYTES:]
    if len(data) <= _DIGEST_BYTES or hashlib.sha256(name.encode() + body).digest() != digest:
        raise ValueError(f"{len(data)} bytes that do not match their checksum: truncated, overwritten or "
                         "another entry's")
    try:
        return np.load(io.BytesIO(body), allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"not a readable array ({exc})") from exc
