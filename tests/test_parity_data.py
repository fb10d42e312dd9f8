"""Parity of our MVTec AD reader with anomalib's ``MVTecAD`` datamodule plus a pre-processor's resize.

The fidelity benchmark feeds one side cl_iad's images and the other anomalib's; the model parity
tests hold the images fixed. This file pins what lies between: the same samples in the same order
with the same labels, and the same pixels. At the files' own size both readers give the same
tensors (to a float's last bit). Resized, they differ by the known amounts that ``docs/models.md`` lists:

* images by at most one grey level (1/255): we resize the 8-bit image with PIL's bilinear filter
  and round to 8 bits, anomalib resizes the float image with torchvision's antialiased bilinear;
* masks on boundary pixels only: PIL's nearest neighbour samples pixel centres, torchvision's
  (anomalib's ``Resize`` on a ``Mask``) samples pixel corners, so an edge moves by up to one pixel.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fake_datasets import write_mvtec

from cl_iad.scenarios import from_folder

pytestmark = pytest.mark.filterwarnings("ignore")  # anomalib's deprecations

NATIVE = 60


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_mvtec(tmp_path_factory.mktemp("mvtec"), categories=("bottle",), n_train=4, n_good=2, n_defect=2,
                       size=NATIVE)


def _pairs(root, size: int):
    """(ours, anomalib's) item pairs of every train and test image, matched by path, at `size` px."""
    from anomalib.data import MVTecAD
    from torchvision.transforms.v2 import Resize

    task = from_folder(root, ["bottle"], image_size=size, dataset="mvtec")[0]
    datamodule = MVTecAD(root=root, category="bottle", num_workers=0)
    datamodule.setup()
    resize = Resize((size, size), antialias=True)  # the resize of every anomalib pre-processor
    out = []
    for ours, theirs in ((task.train, datamodule.train_data), (task.test, datamodule.test_data)):
        paths = [str(p) for p in theirs.samples.image_path]
        assert [str(s.image_path) for s in ours.samples] == paths, "samples or their order differ"
        for i in range(len(ours)):
            item = theirs[i]
            image, mask = resize(item.image, item.gt_mask) if item.gt_mask is not None else (resize(item.image), None)
            out.append((ours[i], int(item.gt_label), image, mask))
    return out


def _boundary(mask: torch.Tensor) -> torch.Tensor:
    """Pixels within one pixel of an edge of `mask` (its 3x3 dilation minus its 3x3 erosion)."""
    m = mask.float()[None, None]
    dilated = F.max_pool2d(m, 3, stride=1, padding=1)
    eroded = -F.max_pool2d(-m, 3, stride=1, padding=1)
    return (dilated - eroded)[0, 0] > 0


def test_at_the_files_own_size_both_readers_give_the_same_tensors(root):
    pairs = _pairs(root, NATIVE)
    assert len(pairs) == 4 + 2 + 2 * 2
    for ours, label, image, mask in pairs:
        assert ours["gt_label"] == label
        # x / 255 (ours) and x * (1 / 255) (torchvision) can differ in the last bit of a float32
        assert float((ours["image"] - image).abs().max()) <= 1e-7
        if mask is not None:
            assert torch.equal(ours["gt_mask"], mask.bool())
    assert sum(label for _, label, _, _ in pairs) == 4  # the defective test images are labelled 1


@pytest.mark.parametrize("size", [40, 96])
def test_resized_images_differ_by_at_most_one_grey_level_and_masks_only_on_edges(root, size):
    pairs = _pairs(root, size)
    image_diff = torch.stack([(o["image"] - image).abs() for o, _, image, _ in pairs])
    assert 0 < float(image_diff.max()) <= 1 / 255 + 1e-6  # rounding to 8 bits, not a different filter
    assert float(image_diff.mean()) < 0.5 / 255
    masks = [(o["gt_mask"], mask.bool()) for o, _, _, mask in pairs if mask is not None and mask.any()]
    assert len(masks) == 4
    for ours, theirs in masks:
        assert ours.shape == theirs.shape == (size, size)
        differ = ours != theirs
        assert not (differ & ~_boundary(theirs)).any(), "mask pixels differ away from the defect's edge"
        assert 0.5 < ours.sum() / theirs.sum() < 2.0
