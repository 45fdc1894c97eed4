"""``train(config)``: data, model, optimizer, checkpoints, validation, early stopping, logging, resume.

The run is set up once (:class:`_Run`), the counters that change from epoch to epoch live in a
:class:`TrainState` (saved in every ``last`` checkpoint, so a resumed run continues exactly), and each epoch is
train -> validate -> checkpoint -> log. Only rank 0 writes files; every checkpoint write is atomic.

The training loss is the criterion's named losses recombined by the task balancer (:mod:`.task_balance`). With
``train.ema`` the weights that are validated, saved (``best`` and ``last``) and exported are the moving average
(:mod:`.ema`); ``last`` keeps the raw weights in its training state for an exact resume.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mammodetr.atomic import to_jsonable, write_json
from mammodetr.checkpoint import (
    CheckpointError,
    load_training_state,
    resolve_checkpoint,
    restore_weights,
    save_checkpoint,
    unwrap_model,
)
from mammodetr.config import RunConfig, save_resolved
from mammodetr.data.dataset import MammoDataset
from mammodetr.data.ground_truth import LabelledImage, load_split
from mammodetr.inference.predictor import Predictor
from mammodetr.metrics.scoring import EvaluationOptions, compute_metrics
from mammodetr.models.criterion import SetCriterion, build_criterion
from mammodetr.models.detr import build_model
from mammodetr.outputs import OutputWriteError, check_fresh, check_separate, move_aside, write_error
from mammodetr.training.distributed import (
    DistInfo,
    all_gather_objects,
    barrier,
    broadcast_object,
    cleanup,
    init_distributed,
)
from mammodetr.training.ema import ModelEma
from mammodetr.training.engine import NonFiniteLossError, predict_loader, train_one_epoch
from mammodetr.training.header import EtaClock, format_duration, header_lines, progress_bar
from mammodetr.training.host_memory import keep_freed_memory
from mammodetr.training.loader import EpochSampler, build_loader
from mammodetr.training.optim import build_optimizer, build_scheduler
from mammodetr.training.precision import fp32_math
from mammodetr.training.rng import rng_state, seed_everything, set_rng_state
from mammodetr.training.task_balance import BalancedCriterion, TaskBalancer, build_task_balancer

__all__ = ["TrainState", "train", "monitor_score", "format_summary"]

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


@dataclass
class TrainState:
    """What changes as a run goes on; saved with every ``last`` checkpoint and restored by ``--resume``.

    Attributes:
        epoch: epochs completed (the next epoch to run, counted from 0).
        batch_in_epoch: batches of the current epoch whose optimizer step is done (a run interrupted mid-epoch).
        best_score: best validation score so far (``train.monitor``; higher is better).
        best_epoch: the epoch (1-based) that reached it.
        bad_evals: epochs since the last improvement (early stopping counts these).
    """

    epoch: int = 0
    batch_in_epoch: int = 0
    best_score: float = -math.inf
    best_epoch: int = 0
    bad_evals: int = 0
    epochs_done: int = 0  # completed by this invocation (not saved)
    last_val: dict = field(default_factory=dict)
    stopped: str = "completed"
    position: dict = field(default_factory=lambda: {"batches": 0})  # live position in the epoch (engine updates)

    def saved(self, epoch: int, batch_in_epoch: int = 0) -> dict:
        return {"epoch": epoch, "batch_in_epoch": batch_in_epoch, "best_score": self.best_score,
                "best_epoch": self.best_epoch, "bad_evals": self.bad_evals}

    @classmethod
    def restored(cls, saved: dict) -> "TrainState":
        return cls(epoch=saved["epoch"], batch_in_epoch=int(saved.get("batch_in_epoch", 0)),
                   best_score=saved["best_score"], best_epoch=saved["best_epoch"], bad_evals=saved["bad_evals"])


class RunLogger:
    """metrics.jsonl (one line per epoch), optional TensorBoard, and skipped-sample records."""

    def __init__(self, out: Path, enabled: bool, tensorboard: bool) -> None:
        self.out, self.enabled = out, enabled
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise RuntimeError(
                    "train.tensorboard needs the tensorboard package: pip install 'mammodetr[tensorboard]'"
                ) from exc
            self.tb = SummaryWriter(str(out / "tensorboard"))

    def _append(self, name: str, text: str) -> None:
        try:
            with open(self.out / name, "a", encoding="utf-8") as f:
                f.write(text)
        except OSError as exc:
            raise write_error(self.out / name, exc, "the line was not saved") from exc

    def epoch(self, record: dict) -> None:
        if not self.enabled:
            return
        self._append("metrics.jsonl", json.dumps(to_jsonable(record)) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and v is not None and k != "epoch":
                    self.tb.add_scalar(k, v, record["epoch"])
            self.tb.flush()

    def bad_samples(self, bad: list) -> None:
        for b in bad:
            log.warning("skipped sample %s: %s", b.file_name, b.error)
        if self.enabled and bad:
            self._append("skipped_samples.jsonl",
                         "".join(json.dumps({"file_name": b.file_name, "error": b.error}) + "\n" for b in bad))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


@dataclass
class _Run:
    """Everything a run sets up once."""

    cfg: RunConfig
    info: DistInfo
    device: torch.device
    out: Path
    micro: int
    train_loader: torch.utils.data.DataLoader
    train_sampler: EpochSampler
    val_loader: torch.utils.data.DataLoader
    val_images: list[LabelledImage]
    model: torch.nn.Module
    criterion: SetCriterion
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    balancer: TaskBalancer
    loss_fn: BalancedCriterion
    steps_per_epoch: int
    ema: ModelEma | None = None
    train_model: torch.nn.Module = None
    train_criterion: torch.nn.Module = None
    predictor: Predictor = None
    logger: RunLogger = None
    epoch_seconds: list[float] = field(default_factory=list)

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights that are validated, saved and exported: the moving average when ``train.ema`` is on."""
        return self.ema.module if self.ema is not None else self.model

    def training_state(self, state: TrainState, epoch: int, batch_in_epoch: int = 0, rng: dict | None = None) -> dict:
        saved = {**state.saved(epoch, batch_in_epoch), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                 "rng": rng if rng is not None else rng_state(), "tasks": self.balancer.state_dict()}
        if self.ema is not None:
            # model.safetensors holds the average; the raw weights go here so that --resume continues exactly.
            saved["ema"] = self.ema.state_dict()
            saved["model"] = {k: v.detach().cpu().clone() for k, v in unwrap_model(self.model).state_dict().items()}
        return saved


def train(cfg: RunConfig, *, resume: bool = False, overwrite: bool = False, verify: bool = True,
          progress: bool = True) -> dict:
    """Train (or resume, with ``resume=True`` and ``cfg.train.out`` the run folder). Returns the summary.

    Args:
        cfg: the resolved config.
        resume: continue the run in ``cfg.train.out`` from its ``checkpoints/last``.
        overwrite: an existing, non-empty ``cfg.train.out`` is moved aside to ``NAME.replaced-<date>-<time>``
            (never deleted) once the data and the model are ready; without it (or ``resume``) it is refused.
        verify: check the resumed weights against their recorded SHA-256.
        progress: progress bars.

    Raises:
        OutputConflictError: the run folder exists (neither ``resume`` nor ``overwrite``), or is, lies inside or
            contains the dataset.
        CheckpointError: ``resume`` and the run has no checkpoint (yet), or one that cannot be used.
        OutputWriteError: a checkpoint or log could not be written (disk full, read-only); the earlier
            checkpoints are intact and ``resume`` continues from the last.
    """
    cfg.validate()
    info, device = init_distributed(cfg.train.device)
    try:
        if info.is_main:
            _check_run_folder(cfg, resume=resume, overwrite=overwrite)
        barrier(info)  # no rank creates the folder before rank 0 has looked at it
        keep = cfg.train.keep_host_memory and device.type == "cpu"
        with fp32_math(device, tf32=cfg.train.tf32), keep_freed_memory(keep):
            return _train(cfg, info, device, resume=resume, overwrite=overwrite, verify=verify, progress=progress)
    finally:
        cleanup(info)


def _check_run_folder(cfg: RunConfig, *, resume: bool, overwrite: bool) -> None:
    out = Path(cfg.train.out)
    check_separate({"--out": out}, {"--data": cfg.data.path})
    if resume:
        try:
            resolve_checkpoint(out / "checkpoints" / "last")
        except CheckpointError:
            raise CheckpointError(f"{out}: nothing to resume: the run has no checkpoints/last yet (it stopped before "
                                  f"its first epoch ended); start it again with --overwrite") from None
        return
    check_fresh(out, overwrite=overwrite, hint="--resume to continue it, ")


def _train(cfg: RunConfig, info: DistInfo, device: torch.device, *, resume: bool, overwrite: bool, verify: bool,
           progress: bool) -> dict:
    run = _setup(cfg, info, device)
    state = _resumed_state(run, verify) if resume else TrainState()
    if info.is_main:  # only now that data, model and resumed state are ready: a failed start changes nothing
        _prepare_run_folder(cfg, run.out, resume, overwrite)
    t0 = time.perf_counter()
    try:
        _run_epochs(run, state, progress)
    except KeyboardInterrupt:
        _save_interrupted(run, state)
    except NonFiniteLossError as exc:
        raise NonFiniteLossError(f"{exc}. Training stopped; the last good checkpoint is kept in "
                                 f"{run.out / 'checkpoints'}") from None
    except OutputWriteError as exc:
        raise OutputWriteError(f"{exc}; training stopped in epoch {state.epoch + 1}; the checkpoints saved before "
                               f"are intact, and --resume {run.out} continues from the last") from exc
    finally:
        run.logger.close()
    return _summary(run, state, time.perf_counter() - t0)


def _micro_batch(cfg: RunConfig, info: DistInfo) -> int:
    t = cfg.train
    micro = t.batch_size // (t.accum_steps * info.world_size)
    if micro * t.accum_steps * info.world_size != t.batch_size:
        raise ValueError(f"train.batch_size {t.batch_size} is not divisible by accum_steps {t.accum_steps} x "
                         f"{info.world_size} processes")
    return micro


def _setup(cfg: RunConfig, info: DistInfo, device: torch.device) -> _Run:
    notes = cfg.resolve_auto()  # before the config is saved: the run folder records the decided values
    t, data, out = cfg.train, cfg.data, Path(cfg.train.out)
    micro = _micro_batch(cfg, info)
    train_ds = MammoDataset(data.path, data.train_split, image_size=data.image_size, augment=data.augment,
                            letterbox=data.letterbox, seed=t.seed)
    val_ds = MammoDataset(data.path, data.val_split, image_size=data.image_size, augment="none",
                          letterbox=data.letterbox)
    val_images = load_split(data.path, data.val_split)
    cfg.data.prepare = train_ds.prepare_options  # predict repeats the dataset's preparation on raw files
    seed_everything(t.seed)
    pin = device.type == "cuda"
    loader_args = dict(batch_size=micro, seed=t.seed, workers=data.workers, rank=info.rank,
                       world_size=info.world_size, pin_memory=pin, max_targets=cfg.loss.max_targets)
    drop_last = len(train_ds) > micro * info.world_size
    train_loader, train_sampler = build_loader(train_ds, shuffle=True, drop_last=drop_last, balance=data.balance,
                                               **loader_args)
    val_loader, _ = build_loader(val_ds, shuffle=False, drop_last=False, **loader_args)
    model = build_model(cfg.model).to(device)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    elif t.precision == "bf16" and device.type == "cpu" and info.is_main:
        log.warning("bf16 on a CPU without --channels-last: oneDNN reorders every convolution's input and output "
                    "between memory layouts, which costs most of what bf16 gains; add --channels-last")
    steps = math.ceil(len(train_loader) / t.accum_steps)
    steps = min(steps, t.max_steps_per_epoch) if t.max_steps_per_epoch else steps
    run = _Run(cfg, info, device, out, micro, train_loader, train_sampler, val_loader, val_images, model,
               *_optimisation(cfg, model, device, steps), steps_per_epoch=steps,
               ema=ModelEma(model, t.ema) if t.ema else None)
    if run.ema is not None:
        run.optimizer.register_step_post_hook(lambda *_: run.ema.update(run.model))
    if info.is_main:
        for line in header_lines(cfg, train_images=load_split(data.path, data.train_split), val_images=val_images,
                                 model=model, device=str(device), world_size=info.world_size, micro_batch=micro,
                                 steps_per_epoch=steps, notes=notes):
            log.info("%s", line)
    return run


def _optimisation(cfg: RunConfig, model: torch.nn.Module, device: torch.device, steps: int) -> tuple:
    """(criterion, optimizer, scheduler, scaler, balancer, balanced criterion) of a run."""
    criterion = build_criterion(cfg.loss, num_aux=cfg.model.dec_layers - 1 if cfg.model.aux_loss else 0)
    scheduler = None
    # The balancer reads the optimizer step count from the scheduler (restored on resume), made just below.
    balancer = build_task_balancer(cfg.tasks, criterion, model, steps, lambda: scheduler.last_epoch,
                                   cfg.train.log_every).to(device)
    optimizer = build_optimizer(model, cfg.optim, balancer.param_groups())
    scheduler = build_scheduler(optimizer, cfg.optim, steps, cfg.train.epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.precision == "fp16" and device.type == "cuda")
    return criterion, optimizer, scheduler, scaler, balancer, BalancedCriterion(criterion, balancer)


def _prepare_run_folder(cfg: RunConfig, out: Path, resume: bool, overwrite: bool) -> None:
    # _check_run_folder has refused an existing run unless resume or overwrite: nothing here deletes a run.
    if not resume and overwrite and check_fresh(out, overwrite=True):
        log.warning("--overwrite: moved the earlier %s to %s", out, move_aside(out))
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    save_resolved(cfg, out / "config.json")


def _resumed_state(run: _Run, verify: bool = True) -> TrainState:
    last = run.out / "checkpoints" / "last"
    saved = load_training_state(last)
    restore_weights(run.model, last, verify=verify)  # the file's weights (the average, with EMA), verified
    if run.ema is not None:
        average = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
        # A run that had no EMA so far: the average starts from the saved weights.
        run.ema.load_state_dict(saved["ema"] if "ema" in saved else {"updates": 0}, average)
        if "ema" in saved:
            run.model.load_state_dict(saved["model"])  # the raw weights the optimizer goes on from
    if "tasks" in saved:
        run.balancer.load_state_dict(saved["tasks"])
    run.optimizer.load_state_dict(saved["optimizer"])
    run.scheduler.load_state_dict(saved["scheduler"])
    run.scaler.load_state_dict(saved["scaler"])
    set_rng_state(saved["rng"])
    state = TrainState.restored(saved)
    if run.info.is_main:
        log.info("resumed %s at epoch %d (best %.4f at epoch %d)", run.out, state.epoch, state.best_score,
                 state.best_epoch)
    return state


def _wrap_for_training(run: _Run) -> None:
    model = run.model
    if run.info.enabled:
        ids = [run.device.index] if run.device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    # The criterion is compiled too: matching and the losses of every layer are small ops, where fusing
    # them is most of the gain.
    run.train_model = torch.compile(model) if run.cfg.train.compile else model
    # The balancer measures gradients with autograd.grad (a graph break): only the criterion inside is compiled.
    run.train_criterion = (BalancedCriterion(torch.compile(run.criterion), run.balancer) if run.cfg.train.compile
                           else run.loss_fn)
    run.predictor = Predictor(run.eval_model, run.cfg, device=run.device, precision=run.cfg.train.precision,
                              batch_size=run.micro, channels_last=run.cfg.train.channels_last, tta=run.cfg.train.tta)
    run.logger = RunLogger(run.out, run.info.is_main, run.cfg.train.tensorboard)


def _run_epochs(run: _Run, state: TrainState, progress: bool) -> None:
    _wrap_for_training(run)
    t = run.cfg.train
    for epoch in range(state.epoch, t.epochs):
        started = time.perf_counter()
        record = {"epoch": epoch + 1, **{f"train_{k}": v for k, v in _train_epoch(run, state, epoch, progress).items()}}
        record.update({f"train_{k}": v for k, v in run.balancer.epoch_summary().items()})
        if (epoch + 1) % t.eval_every == 0 or epoch + 1 == t.epochs:
            record.update(_validate(run, state, epoch))
        run.epoch_seconds.append(time.perf_counter() - started)
        record["seconds"] = run.epoch_seconds[-1]
        if run.info.is_main:
            save_checkpoint(run.out / "checkpoints" / "last", run.eval_model, run.cfg,
                            meta={"epoch": epoch + 1, "val": state.last_val},
                            training_state=run.training_state(state, epoch + 1))
            run.logger.epoch(record)
            eta = sum(run.epoch_seconds) / len(run.epoch_seconds) * (t.epochs - epoch - 1)
            log.info(_epoch_line(record) + f" | ETA {format_duration(eta)}")
        barrier(run.info)
        state.epoch, state.batch_in_epoch = epoch + 1, 0
        state.epochs_done += 1
        if state.bad_evals >= t.patience:
            state.stopped = f"early stop: no improvement of '{t.monitor}' for {state.bad_evals} epochs"
            break


def _train_epoch(run: _Run, state: TrainState, epoch: int, progress: bool) -> dict:
    t = run.cfg.train
    state.position = {"batches": state.batch_in_epoch}
    run.train_sampler.set_epoch(epoch, skip=state.batch_in_epoch * run.micro)
    bar = progress_bar(len(run.train_loader), f"epoch {epoch + 1}/{t.epochs}", progress and run.info.is_main)
    per_epoch = min(len(run.train_loader), t.max_steps_per_epoch * t.accum_steps or len(run.train_loader))
    bar = EtaClock(bar, per_epoch * (t.epochs - epoch) - state.batch_in_epoch,
                   enabled=run.info.is_main and not run.epoch_seconds)
    try:
        return train_one_epoch(
            run.train_model, run.train_criterion, run.train_loader, run.optimizer, run.scheduler, run.scaler,
            device=run.device, epoch=epoch, accum_steps=t.accum_steps, grad_clip=run.cfg.optim.grad_clip,
            precision=t.precision, channels_last=t.channels_last, info=run.info, max_steps=t.max_steps_per_epoch,
            progress=bar, on_bad_samples=run.logger.bad_samples, position=state.position, log_every=t.log_every,
        )
    finally:
        bar.close()


def _validate(run: _Run, state: TrainState, epoch: int) -> dict:
    """Validation metrics (computed on rank 0, shared), the best checkpoint, the early-stopping count."""
    t = run.cfg.train
    preds, val_losses = predict_loader(run.predictor, run.loss_fn, run.val_loader,
                                       on_bad_samples=run.logger.bad_samples)
    gathered = [p for part in all_gather_objects(preds, run.info) for p in part]
    by_name = {p.file_name: p for p in gathered}  # the distributed sampler pads with repeats
    metrics = {}
    if run.info.is_main:
        images = [im for im in run.val_images if im.file_name in by_name]
        result = compute_metrics(images, [by_name[im.file_name] for im in images],
                                 EvaluationOptions(n_bootstrap=0, max_dets=run.cfg.model.num_queries))
        metrics = {k: v for k, v in result.metrics.items() if not isinstance(v, dict)}
    metrics = broadcast_object(metrics, run.info)
    val_loss = val_losses.get("loss", math.nan)
    score = monitor_score(t.monitor, metrics, val_loss)
    state.last_val = {**metrics, "loss": val_loss}
    if score > state.best_score:
        state.best_score, state.best_epoch, state.bad_evals = score, epoch + 1, 0
        if run.info.is_main:
            save_checkpoint(run.out / "checkpoints" / "best", run.eval_model, run.cfg,
                            meta={"epoch": epoch + 1, "val": state.last_val, "monitor": t.monitor, "score": score})
    else:
        state.bad_evals += t.eval_every
    return {**{f"val_{k}": v for k, v in state.last_val.items()}, "val_score": score}


def _save_interrupted(run: _Run, state: TrainState) -> None:
    epoch = state.epoch
    state.stopped = f"interrupted during epoch {epoch + 1}"
    if run.info.is_main:
        # Weights are those after the last completed optimizer step; the position in the epoch is
        # saved with them, so --resume continues with the batches not yet seen.
        batches = state.position["batches"]
        save_checkpoint(run.out / "checkpoints" / "last", run.eval_model, run.cfg,
                        meta={"epoch": epoch, "interrupted": True, "batch_in_epoch": batches},
                        training_state=run.training_state(state, epoch, batches, state.position.get("rng")))
        log.warning("interrupted: saved %s", run.out / "checkpoints" / "last")


def _summary(run: _Run, state: TrainState, seconds: float) -> dict:
    summary = {
        "run": str(run.out),
        "stopped": state.stopped,
        "epochs_run": state.epochs_done,
        "best_epoch": state.best_epoch,
        "best_score": state.best_score if math.isfinite(state.best_score) else None,
        "monitor": run.cfg.train.monitor,
        "last_val": state.last_val,
        "seconds": seconds,
        "best_checkpoint": str(run.out / "checkpoints" / "best"),
    }
    if run.info.is_main:
        write_json(run.out / "summary.json", summary)
    return summary


def _epoch_line(record: dict) -> str:
    parts = [f"epoch {record['epoch']}", f"loss {record.get('train_loss', float('nan')):.4f}"]
    if "train_task_image" in record:  # the balance of the two tasks, as the shared backbone receives it
        parts.append(f"image {record['train_task_image']:.4f} / det {record['train_task_det']:.4f}")
    if record.get("train_grad_ratio_det_image") is not None:
        parts.append(f"grad det/image {record['train_grad_ratio_det_image']:.2f}")
    for k in ("auc", "recall25", "map50"):
        v = record.get(f"val_{k}")
        if v is not None:
            parts.append(f"val_{k} {v:.3f}")
    parts.append(f"{record.get('train_images_per_s', 0):.1f} img/s")
    return " | ".join(parts)


def format_summary(summary: dict) -> str:
    best_score = summary["best_score"] if summary["best_score"] is None else round(summary["best_score"], 4)
    lines = [
        f"run folder     : {summary['run']}",
        f"stopped        : {summary['stopped']} after {summary['epochs_run']} epoch(s) in {summary['seconds']:.0f} s",
        f"best epoch     : {summary['best_epoch']} ({summary['monitor']} = {best_score})",
        f"best checkpoint: {summary['best_checkpoint']}",
    ]
    val = summary.get("last_val") or {}
    if val:
        def pct(v):
            return f"{100 * v:.1f}%" if isinstance(v, (int, float)) and math.isfinite(v) else "n/a"

        lines.append("last validation: " + ", ".join(f"{k} {pct(val.get(k))}" for k in HEADLINE if k in val))
    return "\n".join(lines)
