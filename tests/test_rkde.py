"""RKDE: region proposals, per-region features, a KDE over normal regions, image score = worst region."""

from __future__ import annotations

import pytest
import torch

from cl_iad.backbones import WeightsError
from cl_iad.models.registry import build_model
from cl_iad.models.rkde import GridProposer


def test_grid_proposer_covers_the_image_at_every_scale():
    boxes = GridProposer(scales=(0.25, 0.5), overlap=0.5).boxes(64)
    assert boxes[0].tolist() == [0, 0, 64, 64]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 64).all()
    sides = (boxes[:, 2] - boxes[:, 0]).unique().tolist()
    assert sides == [16, 32, 64]
    covered = torch.zeros(64, 64, dtype=torch.bool)
    for x1, y1, x2, y2 in boxes[1:].int().tolist():
        if x2 - x1 == 16:
            covered[y1:y2, x1:x2] = True
    assert covered.all(), "the smallest windows tile the whole image"


def test_region_features_have_one_row_per_proposal():
    model = build_model("rkde", preset="light")
    emb = model.extract(torch.rand(3, 3, 64, 64))
    n_boxes = len(model.proposer.boxes(64))
    assert emb.shape[:2] == (3, n_boxes)


def test_a_defect_raises_the_worst_region_score(tiny_stream):
    model = build_model("rkde", preset="light")
    train = torch.stack([tiny_stream[0].train[i]["image"] for i in range(len(tiny_stream[0].train))])
    model.fit_features(model.extract(train))
    clean = train[:4]
    damaged = clean.clone()
    damaged[:, :, 20:36, 20:36] = torch.tensor([1.0, 0.0, 1.0]).view(1, 3, 1, 1)  # a magenta blot
    s_clean, maps = model.score(model.extract(clean), (64, 64))
    s_damaged, _ = model.score(model.extract(damaged), (64, 64))
    assert maps is None, "RKDE is a detection model: no pixel maps"
    assert (s_damaged > s_clean).all()


def test_faster_rcnn_proposer_without_weights_explains_the_offline_choice(tmp_path):
    with pytest.raises(WeightsError, match="proposer='grid'"):
        build_model("rkde", proposer="faster_rcnn", proposer_weights=tmp_path / "missing.pth")
    with pytest.raises(WeightsError, match="proposer_weights"):
        build_model("rkde", proposer="faster_rcnn")


@pytest.mark.slow
def test_faster_rcnn_proposer_reads_a_user_weights_file(tmp_path):
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    path = tmp_path / "frcnn_random_for_tests.pth"  # random weights: mechanics only
    torch.save(fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None).state_dict(), path)
    model = build_model("rkde", preset="light", proposer="faster_rcnn", proposer_weights=path, max_regions=8,
                        proposer_min_size=64)
    assert model.extract(torch.rand(2, 3, 64, 64)).shape[:2] == (2, 8)
