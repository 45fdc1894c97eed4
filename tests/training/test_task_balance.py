"""Task balancing on top of the criterion's named losses: every method, the warm-up and the logged gradient norms."""

import math

import pytest
import torch

from mammodetr.config import OptimConfig, TaskConfig
from mammodetr.models.config import LossConfig, ModelConfig
from mammodetr.models.criterion import build_criterion
from mammodetr.models.detr import build_model
from mammodetr.training.optim import build_optimizer
from mammodetr.training.task_balance import BalancedCriterion, build_task_balancer, shared_parameters, task_losses

CFG = dict(backbone="test_convnext", pretrained="none", d_model=32, nheads=4, dec_layers=2, dim_feedforward=64,
           dropout=0.0)


def _setup(seed=0):
    torch.manual_seed(seed)
    model = build_model(ModelConfig(**CFG))
    criterion = build_criterion(LossConfig(), num_aux=1)
    g = torch.Generator().manual_seed(7)
    images = torch.rand(4, 1, 64, 64, generator=g)
    boxes = [torch.tensor([[0.3, 0.4, 0.2, 0.2]]), torch.zeros(0, 4), torch.tensor([[0.6, 0.6, 0.1, 0.3]]),
             torch.tensor([[0.5, 0.5, 0.3, 0.3]])]
    targets = [{"boxes": b, "label": torch.tensor(i % 2)} for i, b in enumerate(boxes)]
    return model, criterion, images, targets


def _balancer(config, criterion, model, step=lambda: 0, log_every=0, steps_per_epoch=10):
    return build_task_balancer(config, criterion, model, steps_per_epoch, step, log_every)


def _grad_norm(loss, params):
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return math.sqrt(sum(float(g.pow(2).sum()) for g in grads if g is not None))


def test_fixed_sum_reproduces_the_criterion_total_and_mean_divides_by_layers():
    model, criterion, images, targets = _setup()
    losses = criterion(model(images), targets)
    out = _balancer(TaskConfig(), criterion, model)(losses)
    torch.testing.assert_close(out["loss"], losses["loss"])
    image, det = task_losses(losses, criterion.weight_dict, "sum")
    torch.testing.assert_close(image + det, losses["loss"])
    manual_det = sum(criterion.weight_dict[k] * v for k, v in losses.items() if k.startswith(("loss_bbox", "loss_giou",
                                                                                             "loss_obj")))
    torch.testing.assert_close(det, manual_det)
    _, det_mean = task_losses(losses, criterion.weight_dict, "mean")
    torch.testing.assert_close(det_mean, det / 2)  # two decoder layers
    mean = _balancer(TaskConfig(det_layers="mean"), criterion, model)(losses)
    torch.testing.assert_close(mean["loss"], image + det / 2)
    assert {"task_image", "task_det", "w_image", "w_det"} <= set(out)


def test_detection_weight_zero_trains_the_image_task_only():
    model, criterion, images, targets = _setup()
    loss_fn = BalancedCriterion(criterion, _balancer(TaskConfig(det_weight=0.0), criterion, model))
    out = loss_fn(model(images), targets)
    torch.testing.assert_close(out["loss"], criterion.weight_dict["loss_cls"] * out["loss_cls"])
    out["loss"].backward()
    decoder_grads = [p.grad for p in model.decoder.parameters() if p.grad is not None]
    assert all(float(g.abs().max()) == 0 for g in decoder_grads)
    assert any(float(p.grad.abs().max()) > 0 for p in model.classifier.parameters())


def test_lambda_warm_up_is_linear_in_optimizer_steps():
    model, criterion, _, _ = _setup()
    step = {"n": 0}
    b = _balancer(TaskConfig(det_weight=2.0, det_warmup_epochs=2), criterion, model, step=lambda: step["n"])
    values = []
    for n in (0, 5, 10, 20, 40):
        step["n"] = n
        values.append(b.det_lambda())
    assert values == [0.0, 0.5, 1.0, 2.0, 2.0]  # 10 steps per epoch, 2 warm-up epochs, det_weight 2


def test_uncertainty_weights_follow_kendall_and_are_trained_by_the_optimizer():
    model, criterion, images, targets = _setup()
    b = _balancer(TaskConfig(method="uncertainty"), criterion, model)
    with torch.no_grad():
        b.log_vars.copy_(torch.tensor([0.5, -0.25]))
    losses = criterion(model(images), targets)
    out = b(losses)
    image, det = task_losses(losses, criterion.weight_dict)
    expected = math.exp(-0.5) * image + 0.5 + math.exp(0.25) * det - 0.25
    torch.testing.assert_close(out["loss"], expected)
    opt = build_optimizer(model, OptimConfig(backbone_lr_mult=1.0), b.param_groups())
    assert any(p is b.log_vars for g in opt.param_groups for p in g["params"])
    before = b.log_vars.detach().clone()
    out["loss"].backward()
    opt.step()
    assert not torch.equal(before, b.log_vars.detach())
    assert set(b.state_dict()) >= {"log_vars", "det_scale"}


def test_gradnorm_equalises_the_tasks_gradients_on_the_last_shared_layer():
    model, criterion, images, targets = _setup()
    b = _balancer(TaskConfig(method="gradnorm", gradnorm_every=1, gradnorm_momentum=0.0), criterion, model)
    losses = criterion(model(images), targets)
    b(losses)  # measures, then sets w_det
    image, det = task_losses(losses, criterion.weight_dict)
    shared = shared_parameters(model)
    g_image, g_det = _grad_norm(image, shared), _grad_norm(det, shared)
    assert float(b.det_scale) == pytest.approx(g_image / g_det, rel=1e-4)
    assert _grad_norm(b.det_scale * det, shared) == pytest.approx(g_image, rel=1e-4)
    # With momentum, the next measurement moves the weight part of the way, in log space.
    b.config = TaskConfig(method="gradnorm", gradnorm_every=1, gradnorm_momentum=0.5)
    with torch.no_grad():
        b.det_scale.fill_(1.0)
    b._last_measured_step = -1
    b(criterion(model(images), targets))
    assert float(b.det_scale) == pytest.approx(math.sqrt(g_image / g_det), rel=1e-3)


def test_gradient_norms_are_measured_every_log_every_steps_and_match_autograd():
    model, criterion, images, targets = _setup()
    step = {"n": 0}
    b = _balancer(TaskConfig(), criterion, model, step=lambda: step["n"], log_every=3)
    expected = []
    for n in range(7):
        step["n"] = n
        losses = criterion(model(images), targets)
        b(losses)
        b(losses)  # a second micro-batch of the same step (accumulation) is not measured again
        if n % 3 == 0:
            image, det = task_losses(losses, criterion.weight_dict)
            expected.append((_grad_norm(image, shared_parameters(model)), _grad_norm(det, shared_parameters(model))))
    assert b._count == 3
    summary = b.epoch_summary()  # the device-side sums, read once
    assert summary["grad_norm_image"] == pytest.approx(sum(gi for gi, _ in expected) / 3, rel=1e-5)
    assert summary["grad_norm_det"] == pytest.approx(sum(gd for _, gd in expected) / 3, rel=1e-5)
    assert summary["grad_ratio_det_image"] == pytest.approx(summary["grad_norm_det"] / summary["grad_norm_image"])
    assert b._count == 0 and summary["det_lambda"] == 1.0 and "grad_norm_image" not in b.epoch_summary()
    with torch.no_grad():
        b(criterion(model(images), targets))
    assert b._count == 0  # validation (no gradients) is never measured


def test_a_non_finite_criterion_total_stays_non_finite():
    model, criterion, images, targets = _setup()
    losses = criterion(model(images), targets)
    losses["loss"] = losses["loss"] * float("nan")
    for method in ("fixed", "uncertainty", "gradnorm"):
        assert not torch.isfinite(_balancer(TaskConfig(method=method), criterion, model)(losses)["loss"])


def test_the_epoch_line_shows_each_task_and_their_gradient_ratio():
    from mammodetr.training.trainer import _epoch_line

    line = _epoch_line({"epoch": 3, "train_loss": 2.0, "train_task_image": 0.2, "train_task_det": 1.8,
                        "train_grad_ratio_det_image": 14.7, "train_images_per_s": 5.0})
    assert "image 0.2000 / det 1.8000" in line and "grad det/image 14.70" in line
    assert "grad" not in _epoch_line({"epoch": 1, "train_loss": 1.0})  # not measured: not shown
