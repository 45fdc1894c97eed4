"""What a run tells the user before and while it trains: a one-screen header and an ETA.

The header is logged (not printed to the progress bar), so it is there with ``--no-progress`` and in redirected
logs: the data (images per split and class), the model (backbone, parameters), the optimiser (with the decided
``auto`` values and why), the task balance, the precision, the device, steps per epoch. The ETA is logged once
after the first batches of the run have been timed, and every epoch line carries the time left.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from collections.abc import Sequence

from torch import nn

from mammodetr.config import RunConfig
from mammodetr.data.ground_truth import LabelledImage

__all__ = ["header_lines", "EtaClock", "format_duration", "progress_bar"]

log = logging.getLogger("mammodetr.train")


def progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm bar on stderr, only on a terminal: logs redirected to a file get the one line per epoch instead."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="batch", disable=None if enabled else True, leave=False,
                dynamic_ncols=True, file=sys.stderr)


def format_duration(seconds: float) -> str:
    """``42 s``, ``7 min``, ``3 h 05 min``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 3600 * 1.5:
        return f"{seconds / 60:.0f} min"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def _split_line(name: str, images: Sequence[LabelledImage]) -> str:
    labels = Counter(im.label_name for im in images)
    by_class = ", ".join(f"{labels[k]} {k}" for k in sorted(labels, key=lambda k: (-labels[k], k)))
    patients = len({im.patient_id for im in images})
    return f"{name} {len(images)} images of {patients} patients ({by_class or 'none'})"


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e5 else f"{n / 1e3:.1f} k"


def _model_line(cfg: RunConfig, model: nn.Module) -> str:
    m = cfg.model
    total = sum(p.numel() for p in model.parameters())
    backbone = sum(p.numel() for n, p in model.named_parameters() if n.startswith("backbone."))
    pretrained = m.pretrained if m.pretrained in ("none", "hub") else f"file {m.pretrained}"
    return (f"{m.backbone} (pretrained: {pretrained}), {_millions(total)} parameters ({_millions(backbone)} in the "
            f"backbone), {m.num_queries} queries, {m.dec_layers} decoder layers, d_model {m.d_model}")


def _optim_line(cfg: RunConfig, notes: Sequence[str]) -> str:
    o = cfg.optim
    mult = next((n for n in notes if n.startswith("backbone lr multiplier")), f"backbone lr multiplier "
                f"{o.backbone_lr_mult:g}")
    return (f"AdamW lr {o.lr:g}, {mult}, weight decay {o.weight_decay:g}, {o.schedule} schedule, "
            f"{o.warmup_epochs} warm-up epoch(s), gradient clip {o.grad_clip:g}")


def _tasks_line(cfg: RunConfig) -> str:
    k = cfg.tasks
    det = "off (classification only)" if k.det_weight == 0 else f"lambda {k.det_weight:g}"
    if k.det_weight and k.det_warmup_epochs:
        det += f" (warm-up {k.det_warmup_epochs:g} epochs)"
    return (f"image loss {cfg.loss.cls_loss}; detection {det}, layers {k.det_layers}; task weighting {k.method}")


def _aids_line(cfg: RunConfig) -> str:
    t, d = cfg.train, cfg.data
    ema = f"EMA {t.ema:g}" if t.ema else "EMA off"
    return (f"augment {d.augment}, class-balanced sampling {'on' if d.balance else 'off'}, {ema}, "
            f"validation TTA {'hflip' if t.tta else 'off'}")


def header_lines(cfg: RunConfig, *, train_images: Sequence[LabelledImage], val_images: Sequence[LabelledImage],
                 model: nn.Module, device: str, world_size: int, micro_batch: int, steps_per_epoch: int,
                 notes: Sequence[str] = ()) -> list[str]:
    """The start-up header, one line per topic."""
    t, d = cfg.train, cfg.data
    geometry = f"{d.image_size} px {'letterbox' if d.letterbox else 'plain resize'}"
    return [
        f"run       : {t.out}",
        f"data      : {d.path}: {_split_line(d.train_split, train_images)}; {_split_line(d.val_split, val_images)}; "
        f"{geometry}",
        f"model     : {_model_line(cfg, model)}",
        f"optimiser : {_optim_line(cfg, notes)}",
        f"tasks     : {_tasks_line(cfg)}",
        f"aids      : {_aids_line(cfg)}",
        f"precision : {t.precision} on {device} x {world_size} process(es); batch {t.batch_size} = {micro_batch} "
        f"per step x {t.accum_steps} accumulation x {world_size}",
        f"schedule  : {steps_per_epoch} optimizer steps per epoch, {t.epochs} epochs, validation every "
        f"{t.eval_every}, early stop after {t.patience} without improvement of '{t.monitor}'",
    ]


class EtaClock:
    """Wraps a progress bar (anything with ``update``/``set_postfix``/``close``) and logs the ETA once.

    Args:
        bar: the epoch's progress bar (a disabled tqdm works).
        batches_left: batches the rest of the run will take, counted from the start of this epoch.
        after: batches to time before the estimate (the first is skipped: it includes start-up work).
        enabled: log at all (rank 0).
    """

    def __init__(self, bar, batches_left: int, after: int = 10, enabled: bool = True) -> None:
        self.bar, self.batches_left, self.after, self.enabled = bar, batches_left, max(int(after), 1), enabled
        self.seen = 0
        self.start: float | None = None

    def update(self, n: int = 1) -> None:
        self.bar.update(n)
        self.seen += n
        if self.seen == 1:
            self.start = time.perf_counter()
        elif self.enabled and self.start is not None and self.seen == self.after + 1:
            per = (time.perf_counter() - self.start) / self.after
            log.info("ETA: %.2f s per batch over %d batches -> about %s of training left (validation not counted)",
                     per, self.after, format_duration(per * (self.batches_left - self.seen)))
            self.enabled = False

    def set_postfix(self, *args, **kwargs) -> None:
        self.bar.set_postfix(*args, **kwargs)

    def close(self) -> None:
        self.bar.close()
