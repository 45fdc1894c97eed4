"""One training epoch and one validation pass. The loop is short on purpose; setup lives in trainer.py."""

from __future__ import annotations

import math
import time
from contextlib import nullcontext

import torch
from torch import nn

from mammodetr.data.model_input import input_transform
from mammodetr.inference.device import autocast
from mammodetr.inference.predictions import Prediction
from mammodetr.inference.predictor import Predictor
from mammodetr.models.targets import unpack_targets
from mammodetr.training.distributed import DistInfo
from mammodetr.training.rng import rng_state


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; training must stop without overwriting the last good checkpoint."""


def to_model_targets(targets: dict, device: torch.device) -> dict:
    """The loader's packed targets -> the criterion's padded targets on ``device``, in one copy."""
    return unpack_targets(targets["packed"].to(device, non_blocking=True))


class LossMeter:
    """Running sums of the named losses, kept on the device.

    Reading a value back is a host-device sync that stalls the GPU's queue, so the step never does it: the
    sums are read every ``log_every`` optimizer steps (the progress bar) and once at the end of the epoch.
    """

    def __init__(self, skip_non_finite: bool = False) -> None:
        self.names: list[str] | None = None
        self.sums: torch.Tensor | None = None
        self.count = 0
        self.skip_non_finite = skip_non_finite

    def add(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """Adds one batch's losses; returns them as one detached vector (in ``names`` order)."""
        values = torch.stack([v.detach().float() for v in losses.values()])
        if self.names is None:
            self.names = list(losses)
            self.sums = torch.zeros(len(values), dtype=torch.float64, device=values.device)
        counted = torch.where(torch.isfinite(values), values, 0.0) if self.skip_non_finite else values
        self.sums += counted
        self.count += 1
        return values

    def means(self) -> dict[str, float]:
        """Mean of each loss over the batches added: one read from the device."""
        if self.names is None:
            return {}
        return dict(zip(self.names, (self.sums / self.count).tolist()))


def _usable_batch(images, bad, device: torch.device, channels_last: bool, on_bad_samples):
    """Report the batch's skipped samples; the images on the device, or None when none could be loaded."""
    if bad and on_bad_samples is not None:
        on_bad_samples(bad)
    if images is None:
        return None
    images = images.to(device, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def _non_finite_error(window: list[tuple[int, torch.Tensor]], names: list[str], norm, epoch: int):
    """The error for a step that must not happen, naming the first bad batch (reads only on this path)."""
    for batch, values in window:
        if not torch.isfinite(values).all():
            named = dict(zip(names, values.tolist()))
            return NonFiniteLossError(
                f"non-finite loss ({named.get('loss')}) at epoch {epoch + 1}, step {batch}: "
                + ", ".join(f"{k}={v:.4g}" for k, v in named.items() if k != "loss")
            )
    return NonFiniteLossError(f"non-finite gradient norm ({float(norm)}) at epoch {epoch + 1}, step {window[-1][0]}")


def optimizer_step(model: nn.Module, optimizer, scaler, grad_clip: float, window, names, epoch: int) -> None:
    """Clip, check, step. The check reads one scalar, the loss and gradient norm folded together.

    ``window``: (batch number, loss vector) of the micro-batches accumulated into this step. A NaN in any of
    them, or in the gradient norm, raises before ``optimizer.step``, so it never reaches the weights. (With the
    fp16 grad scaler, an infinite norm is the scaler's business: it skips that step and lowers the scale.)
    """
    norm = None
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        norm = nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    finite = torch.isfinite(torch.stack([values for _, values in window])).all()
    if norm is not None and not scaler.is_enabled():
        # DDP all-reduced the gradients, so every process sees the same norm and they stop together.
        finite = finite & torch.isfinite(norm)
    if not finite.item():
        raise _non_finite_error(window, names, norm, epoch)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def _show_progress(progress, meter: LossMeter, optimizer, images: int, start: float) -> None:
    progress.set_postfix(loss=f"{meter.means().get('loss', math.nan):.3f}",
                         lr=f"{max(g['lr'] for g in optimizer.param_groups):.2e}",
                         img_s=f"{images / max(time.perf_counter() - start, 1e-9):.1f}")


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    scheduler,
    scaler: torch.amp.GradScaler,
    *,
    device: torch.device,
    epoch: int,
    accum_steps: int,
    grad_clip: float,
    precision: str,
    channels_last: bool,
    info: DistInfo,
    max_steps: int = 0,
    progress=None,
    on_bad_samples=None,
    position: dict | None = None,
    log_every: int = 20,
) -> dict[str, float]:
    """Returns the epoch's mean of every named loss, plus images/s and the final learning rate.

    ``position["batches"]`` (if given) counts the batches of this epoch whose optimizer step is done,
    starting from its value on entry (a resumed epoch): the trainer saves it on Ctrl-C. The progress bar's
    loss is read from the device every ``log_every`` optimizer steps; nothing else in a step reads a value back
    except the one finiteness check of :func:`optimizer_step`.
    """
    position = position if position is not None else {"batches": 0}
    first = position["batches"]
    model.train()
    meter, window = LossMeter(), []
    steps, images_seen, start = 0, 0, time.perf_counter()
    show = progress is not None and not getattr(progress, "disable", False)
    n_batches = len(loader) if not max_steps else max(min(len(loader), max_steps * accum_steps - first), 0)
    for i, (images, targets, bad) in enumerate(loader):
        if i >= n_batches:
            break
        images = _usable_batch(images, bad, device, channels_last, on_bad_samples)
        if images is None:
            continue
        step_now = (i + 1) % accum_steps == 0 or i + 1 == n_batches
        # DDP: skip the gradient all-reduce on accumulation micro-steps.
        sync = model.no_sync() if (info.enabled and not step_now and hasattr(model, "no_sync")) else nullcontext()
        with sync:
            with autocast(device, precision):
                losses = criterion(model(images), to_model_targets(targets, device))
            scaler.scale(losses["loss"] / accum_steps).backward()
        window.append((i + 1, meter.add(losses)))
        images_seen += images.shape[0]
        if step_now:
            optimizer_step(model, optimizer, scaler, grad_clip, window, meter.names, epoch)
            window = []
            scheduler.step()
            steps += 1
            position["batches"] = first + i + 1
            # RNG as of this step boundary: a Ctrl-C later in the epoch must not save dropout draws
            # of batches whose step never happened, or the resumed run would diverge.
            position["rng"] = rng_state()
            if show and steps % log_every == 0:
                _show_progress(progress, meter, optimizer, images_seen * info.world_size, start)
        if progress is not None:
            progress.update(1)
    out = meter.means()
    out["images_per_s"] = images_seen * info.world_size / max(time.perf_counter() - start, 1e-9)
    out["lr"] = max(g["lr"] for g in optimizer.param_groups)  # the heads' lr; the backbone's is lr * backbone_lr_mult
    out["optimizer_steps"] = steps
    return out


@torch.no_grad()
def predict_loader(predictor: Predictor, criterion: nn.Module, loader, *, on_bad_samples=None
                   ) -> tuple[list[Prediction], dict[str, float]]:
    """Predictions (boxes in prepared-image pixels) for every image the loader yields, and mean losses.

    The forward pass and the decoder are the predictor's, so validation scores exactly what ``evaluate`` would.
    """
    preds, meter = [], LossMeter(skip_non_finite=True)
    for images, targets, bad in loader:
        if bad and on_bad_samples is not None:
            on_bad_samples(bad)
        if images is None:
            continue
        outputs = predictor.forward(images)
        with autocast(predictor.device, predictor.precision):
            meter.add(criterion(outputs, to_model_targets(targets, predictor.device)))
        transforms = [input_transform(tuple(hw), predictor.geometry) for hw in targets["orig_size_hw"].tolist()]
        preds.extend(predictor.decode(outputs, transforms, targets["file_name"]))
    return preds, meter.means()
