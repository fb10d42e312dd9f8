"""MAS (memory aware synapses): importance by hand, the penalty, and its effect, found by the registry."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cl_iad.models.registry import build_model
from cl_iad.strategies import Strategy, regime_names, regimes_for
from cl_iad.strategies.mas import output_importance


class _Linear:
    """A one-layer stand-in for a gradient model: outputs are w * x, so the importance is exact by hand."""

    batch_size = 2

    def __init__(self) -> None:
        self.module = nn.Linear(2, 1, bias=False)
        with torch.no_grad():
            self.module.weight.copy_(torch.tensor([[1.0, -2.0]]))

    def regularised_parameters(self):
        return list(self.module.parameters())

    def train_mode(self) -> None:
        self.module.train()

    def distill_outputs(self, module, images):
        return [module(images.reshape(len(images), -1)[:, :2])]


class _Images(torch.utils.data.Dataset):
    def __init__(self, rows):
        self.rows = torch.tensor(rows)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return {"image": self.rows[i].reshape(2, 1, 1)}


def test_importance_is_the_mean_absolute_gradient_of_the_squared_output_norm():
    # one batch of two images x: d/dw mean_b (w.x_b)^2 = mean_b 2 (w.x_b) x_b
    x = [[1.0, 0.0], [1.0, 1.0]]
    (imp,) = output_importance(_Linear(), _Images(x))
    w = torch.tensor([1.0, -2.0])
    expected = sum(2 * (w @ torch.tensor(r)) * torch.tensor(r) for r in x) / 2
    assert torch.allclose(imp, expected.abs().reshape(1, 2))


def test_the_registry_finds_mas_for_gradient_models_only():
    assert "mas" in regime_names()
    assert "mas" in regimes_for(build_model("stfpm", "light")) and "mas" not in regimes_for(build_model("padim"))
    with pytest.raises(ValueError, match="regime mas regularises gradient training"):
        Strategy(build_model("padim"), "mas")


def test_penalty_is_zero_at_the_anchor_grows_away_from_it_and_survives_a_checkpoint(tiny_stream):
    strategy = Strategy(build_model("stfpm", "light"), "mas", mas_lambda=5.0)
    strategy.fit_task(tiny_stream[0], tiny_stream)
    mas = strategy.plugin("mas")
    model = strategy.model
    assert mas.tasks_ == 1 and any(i.sum() > 0 for i in mas.importance_)
    assert mas.mas_penalty(model).item() == pytest.approx(0.0)
    state = strategy.state_dict()
    with torch.no_grad():
        for p in model.regularised_parameters():
            p.add_(0.01)
    moved = mas.mas_penalty(model).item()
    assert moved > 0
    restored = Strategy(build_model("stfpm", "light"), "mas", mas_lambda=5.0).load_state_dict(state)
    with torch.no_grad():
        for p in restored.model.regularised_parameters():
            p.add_(0.01)
    assert restored.plugin("mas").mas_penalty(restored.model).item() == pytest.approx(moved)


def test_mas_keeps_the_model_closer_to_task_0_than_naive(tiny_stream):
    def drift(regime, **kw):
        s = Strategy(build_model("fastflow", preset="light", epochs=3, lr=1e-2), regime, **kw)
        s.fit_task(tiny_stream[0], tiny_stream)
        first = [p.detach().clone() for p in s.model.regularised_parameters()]
        s.fit_task(tiny_stream[1], tiny_stream)
        return sum((a - p).pow(2).sum().item() for a, p in zip(first, s.model.regularised_parameters(), strict=True))

    assert drift("mas", mas_lambda=1e6) < drift("naive")


def test_mas_combines_with_replay(tiny_stream):
    s = Strategy(build_model("stfpm", "light"), "replay+mas", buffer_size=2, mas_lambda=1.0)
    s.fit_task(tiny_stream[0], tiny_stream).fit_task(tiny_stream[1], tiny_stream)
    assert s.regime == "replay+mas" and len(s.plugin("replay").buffer_.samples) == 2 and s.plugin("mas").tasks_ == 2
