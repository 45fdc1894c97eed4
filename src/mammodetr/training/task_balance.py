"""Balancing the image task against the detection task, on top of the criterion's named losses.

The criterion returns ``loss_cls`` (image), ``loss_bbox``, ``loss_giou``, ``loss_obj`` (final decoder layer), the
same with ``_i`` for auxiliary layer i, and ``loss`` (the DETR weighted sum). With 6 decoder layers and lambdas
5/2/1 the detection part of that sum is ~300 times the focal image loss, so the shared backbone learns almost only
from boxes. :class:`TaskBalancer` recombines the terms (``RunConfig.tasks``, docs/training.md):

    L_image = weight_cls * loss_cls
    L_det   = sum over layers of (weight_bbox * loss_bbox + weight_giou * loss_giou + weight_obj * loss_obj)
              (divided by the number of layers with det_layers = "mean")
    loss    = w_image * L_image + w_det * lambda(t) * L_det

where lambda(t) is ``det_weight``, ramped from 0 over ``det_warmup_epochs``, and the task weights are

- ``fixed``: w = 1;
- ``uncertainty`` (Kendall, Gal & Cipolla 2018, in the common form exp(-s) L + s with s = log sigma^2 learned
  with the model): loss = exp(-s_image) L_image + s_image + exp(-s_det) lambda L_det + s_det. The two scalars
  are a parameter group of the optimiser and are saved with the training state;
- ``gradnorm``: every ``gradnorm_every`` steps the gradient norms G of L_image and of L_det on the last shared
  layer are measured and w_det moves (in log space, with ``gradnorm_momentum``) toward G_image / G_det, so with
  lambda = 1 both tasks pull the shared layer equally hard (the balancing rule of GradNorm, Chen et al. 2018,
  without its training-rate term and without a second optimiser).

The "last shared layer" is the projection that feeds the image classifier: the classifier and the detection
decoder both read it, and the gradient at it is what the backbone receives from each task. Every
``train.log_every`` steps both gradient norms are measured (``torch.autograd.grad`` through the heads only, so
cheap) and logged per epoch (``grad_norm_image``, ``grad_norm_det`` in metrics.jsonl).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from mammodetr.checkpoint import unwrap_model
from mammodetr.config import TaskConfig

__all__ = ["TaskBalancer", "BalancedCriterion", "task_losses", "shared_parameters", "build_task_balancer"]


def task_losses(losses: dict[str, Tensor], weight_dict: dict[str, float], det_layers: str = "sum"
                ) -> tuple[Tensor, Tensor]:
    """(L_image, L_det) from the criterion's named losses and its weight dict (see the module docstring)."""
    image = weight_dict["loss_cls"] * losses["loss_cls"]
    det_terms = [weight_dict[k] * v for k, v in losses.items() if k in weight_dict and k != "loss_cls"]
    det = torch.stack(det_terms).sum() if det_terms else torch.zeros_like(image)
    if det_layers == "mean":
        det = det / max(sum(1 for k in losses if k == "loss_bbox" or k.startswith("loss_bbox_")), 1)
    return image, det


def shared_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of the last layer both tasks share: the projection that feeds the image classifier."""
    return [p for p in unwrap_model(model).projections[-1].parameters() if p.requires_grad]


def _grad_norm(loss: Tensor, params: Sequence[Tensor]) -> Tensor:
    if not loss.requires_grad:
        return torch.zeros((), device=loss.device)
    grads = torch.autograd.grad(loss, list(params), retain_graph=True, allow_unused=True)
    squares = [g.float().pow(2).sum() for g in grads if g is not None]
    return torch.stack(squares).sum().sqrt() if squares else torch.zeros((), device=loss.device)


class TaskBalancer(nn.Module):
    """Turns the criterion's named losses into the training loss (see the module docstring).

    Args:
        config: the ``tasks`` section of the run config.
        weight_dict: the criterion's weights (``SetCriterion.weight_dict``).
        steps_per_epoch: optimizer steps per epoch (for the lambda warm-up).
        step: returns the optimizer steps done so far (e.g. the scheduler's step count, restored on resume).
        shared: the parameters of the last shared layer (:func:`shared_parameters`).
        log_every: measure the gradient norms every this many steps for the log (0 = never).

    Attributes:
        log_vars: (2,) s_image, s_det of the "uncertainty" method (absent otherwise).
        det_scale: w_det of the "gradnorm" method (a buffer: saved and restored, not trained).
    """

    def __init__(self, config: TaskConfig, weight_dict: dict[str, float], steps_per_epoch: int,
                 step: Callable[[], int], shared: Sequence[nn.Parameter], log_every: int = 0) -> None:
        super().__init__()
        self.config = config
        self.weight_dict = dict(weight_dict)
        self.steps_per_epoch = max(int(steps_per_epoch), 1)
        self.step = step
        self.shared = list(shared)
        self.log_every = int(log_every)
        if config.method == "uncertainty":
            self.log_vars = nn.Parameter(torch.zeros(2))
        self.register_buffer("det_scale", torch.ones(()))
        self.register_buffer("measured", torch.zeros((), dtype=torch.bool))
        self._sums: Tensor | None = None  # per-epoch sums of (g_image, g_det, L_image, L_det), on the device
        self._count = 0
        self._last_measured_step = -1

    def param_groups(self, lr_scale: float = 1.0) -> list[dict]:
        """The optimiser group of the learned weights (empty unless "uncertainty")."""
        if self.config.method != "uncertainty":
            return []
        return [{"params": [self.log_vars], "lr": self.config.uncertainty_lr * lr_scale, "weight_decay": 0.0}]

    def det_lambda(self) -> float:
        """lambda(t): ``det_weight``, ramped linearly from 0 over ``det_warmup_epochs``."""
        c = self.config
        if c.det_warmup_epochs <= 0:
            return c.det_weight
        ramp = self.step() / (c.det_warmup_epochs * self.steps_per_epoch)
        return c.det_weight * min(1.0, ramp)

    def forward(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        """The criterion's losses with ``loss`` replaced by the balanced total, plus ``task_image``, ``task_det``
        (L_image, L_det), ``w_image``, ``w_det`` (task weights, lambda included)."""
        image, det = task_losses(losses, self.weight_dict, self.config.det_layers)
        lam = self.det_lambda()
        self._measure(image, det)
        if self.config.method == "uncertainty":
            s_image, s_det = self.log_vars[0], self.log_vars[1]
            w_image, w_det = torch.exp(-s_image), torch.exp(-s_det) * lam
            total = w_image * image + s_image
            if lam > 0:  # without the detection term, s_det would fall forever
                total = total + w_det * det + s_det
        else:
            w_image = torch.ones((), device=image.device)
            w_det = (self.det_scale if self.config.method == "gradnorm" else torch.ones((), device=det.device)) * lam
            total = image + w_det * det
        # A non-finite criterion total stays non-finite, so the engine's check stops the run (no host sync here).
        total = torch.where(torch.isfinite(losses["loss"]), total, losses["loss"])
        return {**losses, "loss": total, "task_image": image.detach(), "task_det": det.detach(),
                "w_image": w_image.detach().reshape(()), "w_det": torch.as_tensor(w_det).detach().reshape(())}

    def _measure(self, image: Tensor, det: Tensor) -> None:
        """Gradient norms of both tasks on the shared layer, kept on the device: nothing here waits for it (the
        sums are read once per epoch, by :meth:`epoch_summary`), so the training step stays free of host syncs."""
        if not (torch.is_grad_enabled() and self.training and self.shared and det.requires_grad):
            return
        step = self.step()
        do_log = self.log_every > 0 and step % self.log_every == 0
        do_balance = self.config.method == "gradnorm" and step % self.config.gradnorm_every == 0
        if not (do_log or do_balance) or step == self._last_measured_step:
            return  # with gradient accumulation, one measurement per optimizer step
        self._last_measured_step = step
        norms = torch.stack([_grad_norm(image, self.shared), _grad_norm(det, self.shared)])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(norms)
            norms = norms / dist.get_world_size()
        if do_balance:
            self._update_det_scale(norms[0], norms[1])
        if do_log:
            row = torch.stack([norms[0], norms[1], image.detach().float(), det.detach().float()])
            self._sums = row if self._sums is None else self._sums + row
            self._count += 1

    @torch.no_grad()
    def _update_det_scale(self, g_image: Tensor, g_det: Tensor) -> None:
        """w_det moves toward g_image / g_det in log space (on the device; a non-finite or zero norm is skipped)."""
        target = torch.log(g_image / g_det)
        m = torch.where(self.measured, torch.full_like(target, self.config.gradnorm_momentum), torch.zeros_like(target))
        new = torch.exp(m * torch.log(self.det_scale) + (1 - m) * target)
        ok = (g_image > 0) & (g_det > 0) & torch.isfinite(new)
        self.det_scale.copy_(torch.where(ok, new, self.det_scale))
        self.measured.logical_or_(ok)

    def epoch_summary(self) -> dict[str, float]:
        """Means of this epoch's measurements (then forgotten) and the current lambda, for metrics.jsonl (the
        task weights' epoch means come with the losses: ``w_image``, ``w_det``). One host read per epoch."""
        out: dict[str, float] = {}
        if self._sums is not None:
            means = (self._sums / self._count).tolist()
            out = dict(zip(("grad_norm_image", "grad_norm_det", "loss_image", "loss_det"), means))
            out["grad_ratio_det_image"] = out["grad_norm_det"] / max(out["grad_norm_image"], 1e-12)
        out["det_lambda"] = self.det_lambda()
        self._sums, self._count = None, 0
        return out


class BalancedCriterion(nn.Module):
    """The criterion followed by the task balancer: same call, same output keys (``loss`` balanced)."""

    def __init__(self, criterion: nn.Module, balancer: TaskBalancer) -> None:
        super().__init__()
        self.criterion = criterion
        self.balancer = balancer

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, Tensor]:
        return self.balancer(self.criterion(outputs, targets))


def build_task_balancer(config: TaskConfig, criterion: nn.Module, model: nn.Module, steps_per_epoch: int,
                        step: Callable[[], int], log_every: int) -> TaskBalancer:
    """A :class:`TaskBalancer` for ``criterion`` (its ``weight_dict``) and ``model`` (its last shared layer)."""
    return TaskBalancer(config, criterion.weight_dict, steps_per_epoch, step, shared_parameters(model), log_every)
