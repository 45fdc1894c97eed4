"""``train(config)``: data, model, optimizer, checkpoints, validation, early stopping, logging, resume.

Only rank 0 writes files. Every checkpoint write is atomic (see ``mammodetr.checkpoint``).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path

import torch

from mammodetr.checkpoint import load_training_state, save_checkpoint
from mammodetr.models import build_criterion, build_model
from mammodetr.training.config import RunConfig, save_resolved
from mammodetr.training.distributed import (
    DistInfo,
    all_gather_objects,
    barrier,
    broadcast_object,
    cleanup,
    init_distributed,
)
from mammodetr.training.engine import NonFiniteLossError, predict_loader, train_one_epoch
from mammodetr.training.loader import build_loader
from mammodetr.training.optim import build_optimizer, build_scheduler
from mammodetr.training.rng import rng_state, seed_everything, set_rng_state

log = logging.getLogger("mammodetr.train")

HEADLINE = ("auc", "sensitivity", "specificity", "f1", "map50", "map25", "recall25", "iou")


def monitor_score(monitor: str, metrics: dict, val_loss: float) -> float:
    """Higher is better. ``loss`` -> -val loss; otherwise the mean of the named metrics (None counts as 0)."""
    if monitor == "loss":
        return -val_loss
    values = []
    for name in monitor.split(","):
        name = name.strip()
        if name not in metrics:
            raise ValueError(f"train.monitor: unknown metric '{name}' (available: {', '.join(sorted(metrics))})")
        v = metrics[name]
        values.append(0.0 if v is None or (isinstance(v, float) and math.isnan(v)) else float(v))
    return sum(values) / len(values)


class RunLogger:
    """metrics.jsonl (one line per epoch), optional TensorBoard, and skipped-sample records."""

    def __init__(self, out: Path, enabled: bool, tensorboard: bool) -> None:
        self.out, self.enabled = out, enabled
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise RuntimeError("train.tensorboard needs the tensorboard package: pip install 'mammodetr[tensorboard]'") from exc
            self.tb = SummaryWriter(str(out / "tensorboard"))

    def epoch(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(_finite_or_none(record)) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and v is not None and k != "epoch":
                    self.tb.add_scalar(k, v, record["epoch"])
            self.tb.flush()

    def bad_samples(self, bad: list) -> None:
        for b in bad:
            log.warning("skipped sample %s: %s", b.file_name, b.error)
        if self.enabled:
            with open(self.out / "skipped_samples.jsonl", "a", encoding="utf-8") as f:
                for b in bad:
                    f.write(json.dumps({"file_name": b.file_name, "error": b.error}) + "\n")

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _finite_or_none(record: dict) -> dict:
    # JSON has no NaN: an undefined metric (e.g. AUC of a one-class validation split) is written as null.
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    # disable=None: a bar only on a terminal; logs redirected to a file get the one line per epoch instead.
    return tqdm(total=total, desc=desc, unit="batch", disable=None if enabled else True, leave=False,
                dynamic_ncols=True, file=sys.stderr)


def train(cfg: RunConfig, *, resume: bool = False, progress: bool = True) -> dict:
    """Train (or resume, with ``resume=True`` and ``cfg.train.out`` the run folder). Returns the summary."""
    cfg.validate()
    info, device = init_distributed(cfg.train.device)
    try:
        return _train(cfg, info, device, resume=resume, progress=progress)
    finally:
        cleanup(info)


def _train(cfg: RunConfig, info: DistInfo, device: torch.device, *, resume: bool, progress: bool) -> dict:
    from mammodetr.data.dataset import MammoDataset
    from mammodetr.evaluation.evaluate import EvaluationOptions, compute_metrics, load_split
    from mammodetr.evaluation.predict import geometry_from_config

    t, out = cfg.train, Path(cfg.train.out)
    micro = t.batch_size // (t.accum_steps * info.world_size)
    if micro * t.accum_steps * info.world_size != t.batch_size:
        raise ValueError(
            f"train.batch_size {t.batch_size} is not divisible by accum_steps {t.accum_steps} x {info.world_size} processes"
        )
    if info.is_main:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        if not resume:
            (out / "metrics.jsonl").unlink(missing_ok=True)
            (out / "skipped_samples.jsonl").unlink(missing_ok=True)
        save_resolved(cfg, out / "config.json")
    seed_everything(t.seed)

    data = cfg.data
    train_ds = MammoDataset(data.path, data.train_split, image_size=data.image_size, augment=data.augment,
                            letterbox=data.letterbox, seed=t.seed)
    val_ds = MammoDataset(data.path, data.val_split, image_size=data.image_size, augment="none", letterbox=data.letterbox)
    val_images = load_split(data.path, data.val_split)
    pin = device.type == "cuda"
    train_loader, train_sampler = build_loader(
        train_ds, batch_size=micro, shuffle=True, seed=t.seed, workers=data.workers, rank=info.rank,
        world_size=info.world_size, pin_memory=pin, drop_last=len(train_ds) > micro * info.world_size,
    )
    val_loader, _ = build_loader(
        val_ds, batch_size=micro, shuffle=False, seed=t.seed, workers=data.workers, rank=info.rank,
        world_size=info.world_size, pin_memory=pin, drop_last=False,
    )

    model = build_model(cfg.model).to(device)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = build_criterion(cfg.loss, num_aux=cfg.model.dec_layers - 1 if cfg.model.aux_loss else 0)
    optimizer = build_optimizer(model, cfg.optim)
    steps_per_epoch = math.ceil(len(train_loader) / t.accum_steps)
    if t.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, t.max_steps_per_epoch)
    scheduler = build_scheduler(optimizer, cfg.optim, steps_per_epoch, t.epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=t.precision == "fp16" and device.type == "cuda")

    start_epoch, start_batch, best_score, best_epoch, bad_evals = 0, 0, -math.inf, 0, 0
    if resume:
        state = load_training_state(out / "checkpoints" / "last")
        from safetensors.torch import load_file

        from mammodetr.checkpoint import resolve_checkpoint

        model.load_state_dict(load_file(str(resolve_checkpoint(out / "checkpoints" / "last") / "model.safetensors")))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        start_epoch, best_score, best_epoch, bad_evals = state["epoch"], state["best_score"], state["best_epoch"], state["bad_evals"]
        start_batch = int(state.get("batch_in_epoch", 0))
        if info.is_main:
            log.info("resumed %s at epoch %d (best %.4f at epoch %d)", out, start_epoch, best_score, best_epoch)

    train_model = model
    if info.enabled:
        train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if t.compile:
        train_model = torch.compile(train_model)

    run_logger = RunLogger(out, info.is_main, t.tensorboard)
    config_dict = cfg.to_dict()
    config_dict["data"]["prepare"] = _prepare_options(data.path)
    geometry = geometry_from_config(config_dict)

    def training_state(epoch: int, batch_in_epoch: int = 0, rng: dict | None = None) -> dict:
        return {
            "batch_in_epoch": batch_in_epoch,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": rng if rng is not None else rng_state(),
            "epoch": epoch,
            "best_score": best_score,
            "best_epoch": best_epoch,
            "bad_evals": bad_evals,
        }

    stopped, last_val, t0 = "completed", {}, time.perf_counter()
    epoch, position, epochs_done = start_epoch, {"batches": 0}, 0
    try:
        for epoch in range(start_epoch, t.epochs):
            position = {"batches": start_batch if epoch == start_epoch else 0}
            train_sampler.set_epoch(epoch, skip=position["batches"] * micro)
            bar = _progress(len(train_loader), f"epoch {epoch + 1}/{t.epochs}", progress and info.is_main)
            stats = train_one_epoch(
                train_model, criterion, train_loader, optimizer, scheduler, scaler, device=device, epoch=epoch,
                accum_steps=t.accum_steps, grad_clip=cfg.optim.grad_clip, precision=t.precision,
                channels_last=t.channels_last, info=info, max_steps=t.max_steps_per_epoch, progress=bar,
                on_bad_samples=run_logger.bad_samples, position=position,
            )
            bar.close()
            record = {"epoch": epoch + 1, **{f"train_{k}": v for k, v in stats.items()}}
            is_eval = (epoch + 1) % t.eval_every == 0 or epoch + 1 == t.epochs
            if is_eval:
                preds, val_losses = predict_loader(model, criterion, val_loader, device=device, precision=t.precision,
                                                   channels_last=t.channels_last, geometry=geometry,
                                                   on_bad_samples=run_logger.bad_samples)
                gathered = [p for part in all_gather_objects(preds, info) for p in part]
                by_name = {p.file_name: p for p in gathered}  # the distributed sampler pads with repeats
                metrics = {}
                if info.is_main:
                    images = [im for im in val_images if im.file_name in by_name]
                    result = compute_metrics(images, [by_name[im.file_name] for im in images],
                                             EvaluationOptions(n_bootstrap=0, max_dets=cfg.model.num_queries))
                    metrics = {k: v for k, v in result.metrics.items() if not isinstance(v, dict)}
                metrics = broadcast_object(metrics, info)
                val_loss = val_losses.get("loss", math.nan)
                score = monitor_score(t.monitor, metrics, val_loss)
                last_val = {**metrics, "loss": val_loss}
                record.update({f"val_{k}": v for k, v in last_val.items()})
                record["val_score"] = score
                if score > best_score:
                    best_score, best_epoch, bad_evals = score, epoch + 1, 0
                    if info.is_main:
                        save_checkpoint(out / "checkpoints" / "best", model, config_dict,
                                        meta={"epoch": epoch + 1, "val": last_val, "monitor": t.monitor, "score": score})
                else:
                    bad_evals += t.eval_every
            if info.is_main:
                save_checkpoint(out / "checkpoints" / "last", model, config_dict,
                                meta={"epoch": epoch + 1, "val": last_val}, training_state=training_state(epoch + 1))
                run_logger.epoch(record)
                log.info(_epoch_line(record))
            barrier(info)
            epochs_done += 1
            if bad_evals >= t.patience:
                stopped = f"early stop: no improvement of '{t.monitor}' for {bad_evals} epochs"
                break
    except KeyboardInterrupt:
        stopped = f"interrupted during epoch {epoch + 1}"
        if info.is_main:
            # Weights are those after the last completed optimizer step; the position in the epoch is
            # saved with them, so --resume continues with the batches not yet seen.
            save_checkpoint(out / "checkpoints" / "last", model, config_dict,
                            meta={"epoch": epoch, "interrupted": True, "batch_in_epoch": position["batches"]},
                            training_state=training_state(epoch, position["batches"], position.get("rng")))
            log.warning("interrupted: saved %s", out / "checkpoints" / "last")
    except NonFiniteLossError as exc:
        run_logger.close()
        raise NonFiniteLossError(f"{exc}. Training stopped; the last good checkpoint is kept in {out / 'checkpoints'}") from None
    run_logger.close()
    summary = {
        "run": str(out),
        "stopped": stopped,
        "epochs_run": epochs_done,
        "best_epoch": best_epoch,
        "best_score": best_score if math.isfinite(best_score) else None,
        "monitor": t.monitor,
        "last_val": last_val,
        "seconds": time.perf_counter() - t0,
        "best_checkpoint": str(out / "checkpoints" / "best"),
    }
    if info.is_main:
        printable = {**summary, "last_val": _finite_or_none(summary["last_val"])}
        (out / "summary.json").write_text(json.dumps(printable, indent=2, default=str) + "\n", encoding="utf-8")
    return summary


def _prepare_options(data_path: str) -> dict:
    """The preprocessing options the dataset was prepared with, so ``predict`` can repeat them on raw files."""
    try:
        info = json.loads((Path(data_path) / "annotations.json").read_text(encoding="utf-8")).get("info", {})
    except (OSError, json.JSONDecodeError):
        return {}
    return dict(info.get("prepare", {}) or {})


def _epoch_line(record: dict) -> str:
    parts = [f"epoch {record['epoch']}", f"loss {record.get('train_loss', float('nan')):.4f}"]
    for k in ("auc", "recall25", "map50"):
        v = record.get(f"val_{k}")
        if v is not None:
            parts.append(f"val_{k} {v:.3f}")
    parts.append(f"{record.get('train_images_per_s', 0):.1f} img/s")
    return " | ".join(parts)


def format_summary(summary: dict) -> str:
    lines = [
        f"run folder     : {summary['run']}",
        f"stopped        : {summary['stopped']} after {summary['epochs_run']} epoch(s) in {summary['seconds']:.0f} s",
        f"best epoch     : {summary['best_epoch']} ({summary['monitor']} = {summary['best_score'] if summary['best_score'] is None else round(summary['best_score'], 4)})",
        f"best checkpoint: {summary['best_checkpoint']}",
    ]
    val = summary.get("last_val") or {}
    if val:
        def pct(v):
            return f"{100 * v:.1f}%" if isinstance(v, (int, float)) and math.isfinite(v) else "n/a"

        lines.append("last validation: " + ", ".join(f"{k} {pct(val.get(k))}" for k in HEADLINE if k in val))
    return "\n".join(lines)
