"""The weights' moving average: its warm-up, its update rule, buffers, and that it follows the optimizer steps."""

import pytest
import torch
from torch import nn

from mammodetr.training.ema import ModelEma


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))


def test_warm_up_then_the_configured_decay():
    ema = ModelEma(_model(), 0.999)
    decays = []
    for _ in range(3):
        decays.append(ema.current_decay())
        ema.updates += 1
    assert decays == pytest.approx([1 / 10, 2 / 11, 3 / 12])
    ema.updates = 10_000
    assert ema.current_decay() == 0.999


def test_update_is_a_lerp_of_every_float_tensor_and_copies_counters():
    model = _model()
    ema = ModelEma(model, 0.9)
    start = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model.train()(torch.randn(8, 3))  # BatchNorm statistics and counter move
    ema.update(model)
    d = 1 / 10  # first update: warm-up decay
    live = model.state_dict()
    for k, v in ema.module.state_dict().items():
        if v.dtype.is_floating_point:
            torch.testing.assert_close(v, d * start[k] + (1 - d) * live[k])
        else:
            assert torch.equal(v, live[k])
    assert ema.updates == 1 and not any(p.requires_grad for p in ema.module.parameters())


def test_it_follows_optimizer_steps_through_the_post_step_hook():
    model = _model()
    ema = ModelEma(model, 0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.register_step_post_hook(lambda *_: ema.update(model))
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 3)).sum().backward()
        opt.step()
    assert ema.updates == 3
    assert not torch.equal(ema.module[0].weight, model[0].weight)
    state, weights = ema.state_dict(), {k: v.clone() for k, v in ema.module.state_dict().items()}
    other = ModelEma(_model(), 0.5)
    other.load_state_dict(state, weights)
    assert other.updates == 3 and torch.equal(other.module[0].weight, ema.module[0].weight)
    with pytest.raises(ValueError, match="decay"):
        ModelEma(model, 1.0)
