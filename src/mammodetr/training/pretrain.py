"""``pretrain(config)``: self-supervised pretraining of a backbone on unlabelled mammograms (SimSiam).

Every site has far more unlabelled screening exams than labelled ones. SimSiam (Chen & He, CVPR 2021) learns from
images alone: two random views of one image go through the backbone and a projection MLP, a predictor MLP maps one
view's embedding onto the other's, and a stop-gradient on the target keeps the two from collapsing to a constant.
It needs no negative pairs, so it works with the small batches a CPU or one GPU allows, and it suits any
registered backbone (CNN, ViT, MambaVision).

Views are mammography-safe (:data:`VIEW_PRESET`): left-right mirroring, zoom-in crops, small rotations, gamma,
gain and quantum noise, through the same :func:`~mammodetr.data.transforms.augment` as training; no vertical
flips and no colour changes. Images come from a prepared dataset (labels ignored; the test split is left out unless
asked for) or from a folder of raw files, prepared once as ``prepare`` would into ``OUT/cache``.

The result is ``OUT/backbone.safetensors`` (the backbone's own keys, what ``train --pretrained`` loads) and
``OUT/backbone.json`` (how it was made), rewritten after every epoch; ``OUT/checkpoints/last`` holds what
``--resume`` needs (a Ctrl-C saves the position in the epoch). One line per epoch goes to ``OUT/metrics.jsonl``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save
from torch import Tensor, nn
from torch.utils.data import Dataset

from mammodetr._version import __version__
from mammodetr.atomic import dumps, to_jsonable, write_bytes_atomic, write_json
from mammodetr.checkpoint import MODEL_FILE, load_training_state, resolve_checkpoint, write_checkpoint_folder
from mammodetr.config import OptimConfig, PretrainConfig
from mammodetr.data.dataset import MammoDataset
from mammodetr.data.ground_truth import ANNOTATIONS
from mammodetr.data.model_input import InputGeometry
from mammodetr.data.preprocess import PrepareOptions
from mammodetr.data.transforms import AugmentPreset, augment
from mammodetr.inference.device import autocast
from mammodetr.inference.inputs import collect_inputs, load_raw_input
from mammodetr.models.backbone import Backbone, build_backbone
from mammodetr.models.weights import PRETRAINED_BACKBONE_FILE
from mammodetr.training.distributed import DistInfo, barrier, cleanup, init_distributed
from mammodetr.training.engine import NonFiniteLossError
from mammodetr.training.header import format_duration, progress_bar
from mammodetr.training.loader import build_loader
from mammodetr.training.optim import build_optimizer, build_scheduler
from mammodetr.training.rng import rng_state, seed_everything, set_rng_state

__all__ = ["pretrain", "SimSiam", "UnlabelledViews", "VIEW_PRESET", "BACKBONE_JSON"]

log = logging.getLogger("mammodetr.pretrain")

BACKBONE_JSON = "backbone.json"
PRETRAIN_STATE_FILE = "pretrain.json"  # marks a complete pretraining checkpoint (it has no model config)
VIEW_PRESET = AugmentPreset("ssl_views", hflip_p=0.5, scale=(1.0, 1.6), translate=0.15, rotate_deg=12.0,
                            gamma=(0.6, 1.6), gain=0.2, quantum_noise=0.03, box_rotation="ellipse")


def _mlp(dims: list[int], last_bn_affine: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == len(dims) - 2
        layers.append(nn.Linear(a, b, bias=False))
        layers.append(nn.BatchNorm1d(b, affine=last_bn_affine or not last))
        if not last:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class SimSiam(nn.Module):
    """Backbone + projection MLP (3 layers, BN) + predictor MLP (bottleneck), negative cosine with stop-gradient.

    Args:
        backbone: any :class:`~mammodetr.models.backbone.Backbone`; its deepest map is average-pooled.
        proj_dim: projection width; pred_dim: predictor bottleneck width.
    """

    def __init__(self, backbone: Backbone, proj_dim: int = 512, pred_dim: int = 128) -> None:
        super().__init__()
        self.backbone = backbone
        c = backbone.channels[-1]
        self.projector = _mlp([c, proj_dim, proj_dim, proj_dim], last_bn_affine=False)
        self.predictor = nn.Sequential(nn.Linear(proj_dim, pred_dim, bias=False), nn.BatchNorm1d(pred_dim),
                                       nn.ReLU(inplace=True), nn.Linear(pred_dim, proj_dim))

    def embed(self, images: Tensor) -> Tensor:
        """(B, 1, S, S) in [0, 1] -> (B, proj_dim) projections."""
        feature = self.backbone(self.backbone.normalize(images))[-1]
        return self.projector(feature.float().mean(dim=(-2, -1)))

    def forward(self, view1: Tensor, view2: Tensor) -> dict[str, Tensor]:
        """Returns ``loss`` (in [-1, 1], lower is better) and ``spread`` (per-dimension std of the normalised
        embeddings x sqrt(dim): about 1 when they spread over the sphere, 0 when they collapse)."""
        z1, z2 = self.embed(view1), self.embed(view2)
        with torch.autocast(device_type=z1.device.type, enabled=False):
            p1, p2 = self.predictor(z1.float()), self.predictor(z2.float())
            loss = -0.5 * (F.cosine_similarity(p1, z2.detach().float(), dim=-1).mean()
                           + F.cosine_similarity(p2, z1.detach().float(), dim=-1).mean())
        spread = F.normalize(z1.detach().float(), dim=-1).std(dim=0).mean() * math.sqrt(z1.shape[-1])
        return {"loss": loss, "spread": spread}


class UnlabelledViews(Dataset):
    """Two random views of each image: ``(views (2, 1, S, S), {"index": i})`` (the trainer's collate stacks them).

    Args:
        images: ``len`` and ``[i]`` -> (1, S, S) float in [0, 1]; ``images.images[i]["file_name"]`` names image i.
        seed: a view is a function of (seed, epoch, index, view) alone.
        preset: the view augmentation.
    """

    def __init__(self, images, seed: int = 0, preset: AugmentPreset = VIEW_PRESET) -> None:
        self.source, self.seed, self.preset, self.epoch = images, int(seed), preset, 0
        self.images = images.images

    def __len__(self) -> int:
        return len(self.source)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, index: int):
        image = self.source[index]
        no_boxes = torch.zeros(0, 4)
        views = [augment(image, no_boxes, self.preset, np.random.default_rng([self.seed, self.epoch, index, v]))[0]
                 for v in (0, 1)]
        return torch.stack(views), {"index": index}


class _PreparedImages:
    """The model-input images of a prepared dataset's chosen splits (labels ignored)."""

    def __init__(self, root: str, splits: tuple[str, ...] | None, geometry: InputGeometry) -> None:
        self.ds = MammoDataset(root, None, image_size=geometry.image_size, augment="none",
                               letterbox=geometry.letterbox)
        self.keep = [i for i, im in enumerate(self.ds.images)
                     if (im.get("split") != "test" if splits is None else im.get("split") in splits)]
        self.images = [self.ds.images[i] for i in self.keep]
        if not self.keep:
            raise ValueError(f"{root}: no images in the splits {splits or 'other than test'}")

    def __len__(self) -> int:
        return len(self.keep)

    def __getitem__(self, index: int) -> Tensor:
        return self.ds[self.keep[index]][0]


class _FolderImages:
    """Raw files prepared once (default preparation, model-input size) into ``cache_dir`` as uint16 .npy files.

    Cache files are numbered, not named after the inputs; the cache is reused when the same files (paths, sizes,
    modification times, as a hash) are given again, e.g. on ``--resume``.
    """

    def __init__(self, inputs: list[str], geometry: InputGeometry, cache_dir: Path, progress: bool) -> None:
        files = collect_inputs(inputs)
        if not files:
            raise ValueError(f"{', '.join(inputs)}: no image files found")
        key = hashlib.sha256("\n".join(f"{f.resolve()}|{f.stat().st_size}|{f.stat().st_mtime_ns}"
                                       for f in files).encode()).hexdigest()
        self.dir = cache_dir / f"{geometry.image_size}_{'letterbox' if geometry.letterbox else 'plain'}"
        index = self.dir / "index.json"
        if index.is_file() and json.loads(index.read_text()).get("inputs_sha256") == key:
            n = json.loads(index.read_text())["images"]
        else:
            n = self._fill(files, geometry, progress)
            write_json(index, {"inputs_sha256": key, "images": n, "files_given": len(files)})
        if n == 0:
            raise ValueError(f"{', '.join(inputs)}: none of the {len(files)} files could be read")
        self.images = [{"file_name": f"cached image {i}"} for i in range(n)]

    def _fill(self, files: list[Path], geometry: InputGeometry, progress: bool) -> int:
        from tqdm import tqdm

        self.dir.mkdir(parents=True, exist_ok=True)
        n = 0
        for path in tqdm(files, desc="prepare", unit="img", disable=not progress):
            try:
                raw = load_raw_input(path, PrepareOptions(), geometry)
            except ValueError as e:
                log.warning("%s", e)
                continue
            u16 = np.clip(raw.image[0].numpy() * 65535.0 + 0.5, 0, 65535).astype(np.uint16)
            np.save(self.dir / f"{n:07d}.npy", u16)
            n += 1
        return n

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Tensor:
        return torch.from_numpy(np.load(self.dir / f"{index:07d}.npy").astype(np.float32) / 65535.0)[None]


def _source(cfg: PretrainConfig, out: Path, progress: bool):
    geometry = InputGeometry(cfg.image_size, cfg.letterbox)
    if (Path(cfg.data) / ANNOTATIONS).is_file():
        return _PreparedImages(cfg.data, tuple(cfg.splits) if cfg.splits else None, geometry), "prepared dataset"
    if not Path(cfg.data).exists():
        raise ValueError(f"{cfg.data}: no such file or folder")
    return _FolderImages([cfg.data], geometry, out / "cache", progress), "image files"


@dataclass
class _Pretraining:
    """Everything a pretraining run sets up once."""

    cfg: PretrainConfig
    info: DistInfo
    device: torch.device
    out: Path
    model: SimSiam
    train_model: nn.Module
    loader: torch.utils.data.DataLoader
    sampler: object
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    steps_per_epoch: int
    n_images: int
    source: str

    def state(self, epoch: int, batch: int, rng: dict | None = None) -> dict:
        return {"epoch": epoch, "batch_in_epoch": batch, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": rng if rng is not None else rng_state()}


def pretrain(cfg: PretrainConfig, *, resume: bool = False, progress: bool = True) -> dict:
    """Pretrain ``cfg.backbone`` (or resume, with ``resume=True`` and ``cfg.out`` the run folder).

    Returns:
        A summary: ``out``, ``backbone_file``, ``epochs_run``, ``loss`` (last epoch), ``stopped``, ``seconds``.
    """
    cfg.validate()
    info, device = init_distributed(cfg.device)
    try:
        run = _setup(cfg, info, device, resume, progress)
        return _run(run, resume, progress)
    finally:
        cleanup(info)


def _check_out(out: Path, resume: bool) -> None:
    started = (out / "checkpoints" / "last").exists() or (out / PRETRAINED_BACKBONE_FILE).exists()
    if started and not resume:
        raise ValueError(f"{out}: already holds a pretraining run; continue it with --resume {out}, or choose "
                         f"another --out")
    if resume and not started:
        raise ValueError(f"{out}: no pretraining run to resume (no checkpoints/last)")


def _setup(cfg: PretrainConfig, info: DistInfo, device: torch.device, resume: bool, progress: bool) -> _Pretraining:
    out = Path(cfg.out)
    _check_out(out, resume)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", cfg.to_dict())
    source, kind = _source(cfg, out, progress and info.is_main)
    barrier(info)
    micro = cfg.batch_size // info.world_size
    if micro < 2 or len(source) < micro * info.world_size:
        raise ValueError(f"batch_size {cfg.batch_size} needs at least 2 images per process and no more than the "
                         f"{len(source)} images there are")
    seed_everything(cfg.seed)
    backbone = build_backbone(cfg.backbone, pretrained=cfg.pretrained, **cfg.backbone_options)
    if cfg.image_size % backbone.size_divisor:
        raise ValueError(f"image_size {cfg.image_size} is not a multiple of {cfg.backbone}'s stride "
                         f"{backbone.size_divisor}")
    model = SimSiam(backbone, cfg.proj_dim, cfg.pred_dim).to(device)
    train_model = model
    if info.enabled:
        train_model = torch.nn.parallel.DistributedDataParallel(
            nn.SyncBatchNorm.convert_sync_batchnorm(model) if device.type == "cuda" else model,
            device_ids=[device.index] if device.type == "cuda" else None)
    loader, sampler = build_loader(UnlabelledViews(source, cfg.seed), batch_size=micro, shuffle=True, seed=cfg.seed,
                                   workers=cfg.workers, rank=info.rank, world_size=info.world_size,
                                   pin_memory=device.type == "cuda", drop_last=True)
    steps = min(len(loader), cfg.max_steps_per_epoch) if cfg.max_steps_per_epoch else len(loader)
    optim_cfg = OptimConfig(lr=cfg.lr, backbone_lr_mult=1.0, weight_decay=cfg.weight_decay,
                            warmup_epochs=cfg.warmup_epochs, grad_clip=0.0)
    optimizer = build_optimizer(model, optim_cfg)
    scheduler = build_scheduler(optimizer, optim_cfg, steps, cfg.epochs)
    if info.is_main:
        log.info("pretrain %s (%s, SimSiam) on %d images (%s) at %d px; %d steps per epoch of %d images x %d "
                 "process(es), %d epochs, %s on %s", cfg.backbone, f"pretrained: {cfg.pretrained}", len(source), kind,
                 cfg.image_size, steps, micro, info.world_size, cfg.epochs, cfg.precision, device)
    return _Pretraining(cfg, info, device, out, model, train_model, loader, sampler, optimizer, scheduler, steps,
                        len(source), kind)


def _restore(run: _Pretraining) -> tuple[int, int]:
    last = run.out / "checkpoints" / "last"
    saved = load_training_state(last, PRETRAIN_STATE_FILE)
    run.model.load_state_dict(load_file(str(resolve_checkpoint(last, PRETRAIN_STATE_FILE) / MODEL_FILE)))
    run.optimizer.load_state_dict(saved["optimizer"])
    run.scheduler.load_state_dict(saved["scheduler"])
    set_rng_state(saved["rng"])
    if run.info.is_main:
        log.info("resumed %s at epoch %d, batch %d", run.out, saved["epoch"] + 1, saved["batch_in_epoch"])
    return int(saved["epoch"]), int(saved["batch_in_epoch"])


def _run(run: _Pretraining, resume: bool, progress: bool) -> dict:
    first_epoch, batch = _restore(run) if resume else (0, 0)
    t0, done, last_loss, stopped = time.perf_counter(), 0, math.nan, "completed"
    epoch, position = first_epoch, {"batches": batch}
    try:
        for epoch in range(first_epoch, run.cfg.epochs):
            position = {"batches": batch}
            record = {"epoch": epoch + 1, **_epoch(run, epoch, position, progress)}
            batch, done, last_loss = 0, done + 1, record["loss"]
            if run.info.is_main:
                _save(run, epoch + 1, 0, record)
                log.info("epoch %d | loss %.4f | spread %.3f | %.1f img/s | ETA %s", epoch + 1, record["loss"],
                         record["spread"], record["images_per_s"],
                         format_duration(record["seconds"] * (run.cfg.epochs - epoch - 1)))
            barrier(run.info)
    except KeyboardInterrupt:
        stopped = f"interrupted during epoch {epoch + 1}"
        if run.info.is_main:
            _save(run, epoch, position["batches"], None, position.get("rng"))
            log.warning("interrupted: saved %s", run.out / "checkpoints" / "last")
    summary = {"out": str(run.out), "backbone_file": str(run.out / PRETRAINED_BACKBONE_FILE), "epochs_run": done,
               "loss": last_loss, "stopped": stopped, "seconds": time.perf_counter() - t0}
    if run.info.is_main:
        write_json(run.out / "summary.json", summary)
    return summary


def _epoch(run: _Pretraining, epoch: int, position: dict, progress: bool) -> dict:
    run.sampler.set_epoch(epoch, skip=position["batches"] * run.loader.batch_size)
    run.train_model.train()
    first, n_batches = position["batches"], max(run.steps_per_epoch - position["batches"], 0)
    sums, seen, start = {"loss": 0.0, "spread": 0.0}, 0, time.perf_counter()
    bar = progress_bar(n_batches, f"pretrain {epoch + 1}/{run.cfg.epochs}", progress and run.info.is_main)
    try:
        for i, (views, _, bad) in enumerate(run.loader):
            if i >= n_batches:
                break
            for b in bad:
                log.warning("skipped image %s: %s", b.file_name, b.error)
            if views is None or len(views) < 2:
                continue  # BatchNorm needs two images
            views = views.to(run.device, non_blocking=True)
            with autocast(run.device, run.cfg.precision):
                out = run.train_model(views[:, 0], views[:, 1])
            if not torch.isfinite(out["loss"]):
                raise NonFiniteLossError(f"non-finite pretraining loss at epoch {epoch + 1}, step {first + i + 1}")
            run.optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            run.optimizer.step()
            run.scheduler.step()
            position["batches"], position["rng"] = first + i + 1, rng_state()
            sums = {k: sums[k] + float(out[k].detach()) for k in sums}
            seen += 1
            bar.update(1)
            bar.set_postfix(loss=f"{sums['loss'] / seen:.3f}")
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    return {**{k: v / max(seen, 1) for k, v in sums.items()}, "steps": seen, "seconds": seconds,
            "images_per_s": seen * run.loader.batch_size * run.info.world_size / max(seconds, 1e-9),
            "lr": run.optimizer.param_groups[0]["lr"]}


def _save(run: _Pretraining, epoch: int, batch: int, record: dict | None, rng: dict | None = None) -> None:
    """``checkpoints/last`` (resume), ``backbone.safetensors`` + ``backbone.json`` (use), the metrics line."""
    write_checkpoint_folder(run.out / "checkpoints" / "last", run.model.state_dict(),
                            {PRETRAIN_STATE_FILE: dumps({"epoch": epoch, "batch_in_epoch": batch})},
                            training_state=run.state(epoch, batch, rng))
    weights = save(run.model.backbone.pretrained_state_dict(), metadata={"format": "pt"})
    write_bytes_atomic(run.out / PRETRAINED_BACKBONE_FILE, weights)
    cfg = run.cfg
    write_json(run.out / BACKBONE_JSON, {
        "backbone": cfg.backbone, "backbone_options": cfg.backbone_options, "image_size": cfg.image_size,
        "letterbox": cfg.letterbox, "method": cfg.method, "started_from": cfg.pretrained, "epochs_done": epoch,
        "images": run.n_images, "source": run.source, "loss": record["loss"] if record else None,
        "weights_sha256": hashlib.sha256(weights).hexdigest(), "mammodetr": __version__,
        "use": f"mammodetr train --backbone {cfg.backbone} --pretrained {run.out / PRETRAINED_BACKBONE_FILE}",
    })
    if record is not None:
        with open(run.out / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(to_jsonable(record)) + "\n")
