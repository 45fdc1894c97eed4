"""One training epoch and one validation pass. The loop is short on purpose; setup lives in trainer.py."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from contextlib import nullcontext

import torch
from torch import nn

from mammodetr.data.model_input import input_transform
from mammodetr.inference.device import autocast
from mammodetr.inference.predictions import Prediction
from mammodetr.inference.predictor import Predictor
from mammodetr.training.distributed import DistInfo
from mammodetr.training.rng import rng_state


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; training must stop without overwriting the last good checkpoint."""


def to_model_targets(targets: list[dict], device: torch.device) -> list[dict]:
    """Dataset targets -> the criterion's contract (``boxes`` normalised cxcywh, ``label``)."""
    return [
        {
            "boxes": t["boxes_cxcywh"].to(device, non_blocking=True),
            "label": t["label"].to(device, non_blocking=True),
            "box_malignant": t["box_malignant"].to(device, non_blocking=True),
        }
        for t in targets
    ]


def _usable_batch(images, bad, device: torch.device, channels_last: bool, on_bad_samples):
    """Report the batch's skipped samples; the images on the device, or None when none could be loaded."""
    if bad and on_bad_samples is not None:
        on_bad_samples(bad)
    if images is None:
        return None
    images = images.to(device, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


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
) -> dict[str, float]:
    """Returns the epoch's mean of every named loss, plus images/s and the final learning rate.

    ``position["batches"]`` (if given) counts the batches of this epoch whose optimizer step is done,
    starting from its value on entry (a resumed epoch): the trainer saves it on Ctrl-C.
    """
    position = position if position is not None else {"batches": 0}
    first = position["batches"]
    model.train()
    sums: dict[str, float] = defaultdict(float)
    steps, batches, images_seen, start = 0, 0, 0, time.perf_counter()
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
            loss = losses["loss"]
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, step {i + 1}: "
                    + ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items() if k != "loss")
                )
            scaler.scale(loss / accum_steps).backward()
        if step_now:
            if grad_clip > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            steps += 1
            position["batches"] = first + i + 1
            # RNG as of this step boundary: a Ctrl-C later in the epoch must not save dropout draws
            # of batches whose step never happened, or the resumed run would diverge.
            position["rng"] = rng_state()
        for k, v in losses.items():
            sums[k] += v.item()
        batches += 1
        images_seen += images.shape[0]
        if progress is not None:
            progress.update(1)
            progress.set_postfix(
                loss=f"{sums['loss'] / batches:.3f}",
                lr=f"{max(g['lr'] for g in optimizer.param_groups):.2e}",
                img_s=f"{images_seen * info.world_size / (time.perf_counter() - start):.1f}",
            )
    out = {k: v / max(batches, 1) for k, v in sums.items()}
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
    preds, sums, n = [], defaultdict(float), 0
    for images, targets, bad in loader:
        if bad and on_bad_samples is not None:
            on_bad_samples(bad)
        if images is None:
            continue
        outputs = predictor.forward(images)
        with autocast(predictor.device, predictor.precision):
            losses = criterion(outputs, to_model_targets(targets, predictor.device))
        for k, v in losses.items():
            if math.isfinite(v.item()):
                sums[k] += v.item()
        n += 1
        transforms = [input_transform(tuple(int(s) for s in t["orig_size_hw"]), predictor.geometry) for t in targets]
        preds.extend(predictor.decode(outputs, transforms, [t["file_name"] for t in targets]))
    return preds, {k: v / max(n, 1) for k, v in sums.items()}
