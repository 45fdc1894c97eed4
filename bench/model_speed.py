"""Model speed and memory: backbone-only vs full multi-task DETR, inference and training, and the step's host syncs.

For each backbone at 512x512 (batch 1 for inference, batch 2 for a training step), fp32 and bf16 autocast, in the
chosen memory format(s) (default channels-last, the fast path of the CPU's oneDNN convolutions):
  - backbone-only latency, full-model latency and their ratio (target <= 1.10), measured alternately so
    that load changes on a shared machine affect both; ratios are medians of per-round ratios;
  - the full model's training step (the trainer's own ``train_one_epoch``: DETR losses, clipping, the
    finiteness check, AdamW) vs backbone + GAP + linear classifier; the heads' share = (full - classifier) / full
    (target <= 10 % on the CPU);
  - host syncs per training step (target <= 2): on the CPU, scalar reads / data-dependent shapes / host copies in
    a profiler trace (mammodetr.training.host_syncs); on CUDA, what ``torch.cuda.set_sync_debug_mode`` reports;
  - bf16 rows: the fp32 step of the same model and memory format, alternated in the same process (speed-up);
  - parameter counts and peak resident memory;
  - once: the matcher of 6 layers x batch 32, exact on-device enumeration vs scipy (target <= 1 ms on the CPU).
Each (backbone, precision, format) runs in its own subprocess so peak memory is that configuration's alone.

    python bench/model_speed.py                       # all backbones, fp32 + bf16, channels-last, 2 threads
    python bench/model_speed.py --backbones resnet50 --precisions fp32 bf16 --memory-formats contiguous channels_last

Prints a table and writes bench/results/model_speed.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

BACKBONES = ["resnet50", "convnextv2_tiny", "mambavision_t", "dinov3_vitb16"]


def _timed_pair(fn_a, fn_b, iters: int, warmup: int, sync=lambda: None) -> tuple[float, float, float, float]:
    """Alternate a and b, so load changes on a shared machine hit both; returns the medians of a, of b and
    of the per-round ratio b / a (the ratio is what the targets are about), and the ratio of the fastest rounds
    (min b / min a: noise on a shared machine only adds time, so the minima are the other robust estimate)."""
    for _ in range(warmup):
        fn_a()
        fn_b()
    ta, tb = [], []
    for _ in range(iters):
        for fn, times in ((fn_a, ta), (fn_b, tb)):
            sync()
            t = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t)
    ratio = statistics.median(b / a for a, b in zip(ta, tb))
    return statistics.median(ta), statistics.median(tb), ratio, min(tb) / min(ta)


def _matcher_row(args, layers: int = 6, batch: int = 32) -> dict:
    """Median ms of one match of every decoder layer at once (K = 3 queries, 0-3 targets per image): the exact
    on-device enumeration vs the scipy solve per image and layer, alternated. Runs in this process (no model)."""
    if not args.matcher_iters:
        return {}
    import torch

    from mammodetr import HungarianMatcher

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    boxes = (torch.rand(layers, batch, 3, 4, generator=g) * 0.5 + 0.2).to(dev)
    logits = torch.randn(layers, batch, 3, generator=g).to(dev)
    tgt = (torch.rand(batch, 3, 4, generator=g) * 0.5 + 0.2).to(dev)
    mask = (torch.arange(3)[None] < torch.randint(0, 4, (batch, 1), generator=g)).to(dev)
    exact, scipy = HungarianMatcher(), HungarianMatcher(exact_max_queries=0)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    t_exact, t_scipy, _, _ = _timed_pair(lambda: exact.match(boxes, logits, tgt, mask),
                                      lambda: scipy.match(boxes, logits, tgt, mask), args.matcher_iters, 20, sync)
    return {"layers": layers, "batch": batch, "device": args.device, "exact_ms": t_exact * 1e3,
            "scipy_ms": t_scipy * 1e3}


def _setup(backbone: str, size: int, dev, channels_last: bool, infer_batch: int, train_batch: int):
    import torch
    from torch import nn

    from mammodetr import LossConfig, ModelConfig, build_criterion, build_model
    from mammodetr.config import OptimConfig
    from mammodetr.training.loader import collate_skipping
    from mammodetr.training.optim import build_optimizer, build_scheduler

    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone=backbone, pretrained="none", dropout=0.0)).to(dev)
    criterion = build_criterion(LossConfig(), num_aux=len(model.decoder.layers) - 1)
    backbone_mod = model.backbone

    class Classifier(nn.Module):
        """The baseline the paper's heads are compared with: backbone + GAP + linear."""

        def __init__(self) -> None:
            super().__init__()
            self.backbone = backbone_mod
            self.fc = nn.Linear(backbone_mod.channels[-1], 2)

        def forward(self, x):
            return self.fc(self.backbone(x)[-1].mean((-2, -1)))

    classifier = Classifier().to(dev)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model, classifier = model.to(memory_format=fmt), classifier.to(memory_format=fmt)
    items = [(torch.rand(1, size, size), {
        "boxes_cxcywh": torch.tensor([[0.4, 0.4, 0.1, 0.1]]) if i % 2 == 0 else torch.zeros(0, 4),
        "box_malignant": torch.ones(1 - i % 2, dtype=torch.int64), "label": torch.tensor(1 - i % 2),
        "file_name": f"{i}.png", "orig_size_hw": torch.tensor([size, size])}) for i in range(train_batch)]
    optim_cfg = OptimConfig(warmup_epochs=0, backbone_lr_mult=0.1)
    return {
        "torch": torch, "nn": nn, "model": model, "criterion": criterion, "classifier": classifier, "fmt": fmt,
        "x1": torch.rand(infer_batch, 1, size, size, device=dev).contiguous(memory_format=fmt),
        "batch": collate_skipping(items, max_targets=3),
        "labels": torch.tensor([1 - i % 2 for i in range(train_batch)], device=dev),
        "opt_full": build_optimizer(model, optim_cfg), "opt_cls": build_optimizer(classifier, optim_cfg),
        "sched": build_scheduler(build_optimizer(model, optim_cfg), optim_cfg, 10**6, 1000),
    }


def _full_step(s: dict, dev, precision: str, channels_last: bool):
    """One optimizer step of the full model through the trainer's own loop (losses, clipping, checks)."""
    from mammodetr.training.distributed import DistInfo
    from mammodetr.training.engine import train_one_epoch

    torch = s["torch"]
    scaler = torch.amp.GradScaler(dev.type, enabled=False)
    images, targets, _ = s["batch"]
    if dev.type == "cuda":  # pinned, as the trainer's loader gives them, so their copy in the step does not wait
        targets = {**targets, "packed": targets["packed"].pin_memory()}
    loader = [(images.to(dev), targets, [])]  # images already there, as for the classifier step

    def step():
        train_one_epoch(s["model"], s["criterion"], loader, s["opt_full"], s["sched"], scaler, device=dev, epoch=0,
                        accum_steps=1, grad_clip=0.1, precision=precision, channels_last=channels_last,
                        info=DistInfo())

    return step


def _classifier_step(s: dict, dev, precision: str, channels_last: bool):
    from mammodetr.inference.device import autocast

    nn, classifier, opt = s["nn"], s["classifier"], s["opt_cls"]
    x2n = s["model"].normalize(s["batch"][0].to(dev)).contiguous(memory_format=s["fmt"])

    def step():
        classifier.train()
        with autocast(dev, precision):
            loss = nn.functional.cross_entropy(classifier(x2n).float(), s["labels"])
        loss.backward()
        nn.utils.clip_grad_norm_(classifier.parameters(), 0.1)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def _count_syncs(step, dev) -> dict:
    from mammodetr.training.host_syncs import count_cuda_syncs, count_host_syncs

    if dev.type == "cuda":
        return {"total": count_cuda_syncs(step)[1], "how": "torch.cuda.set_sync_debug_mode('warn')"}
    return {**count_host_syncs(step)[1].as_dict(), "how": "CPU profiler + TorchFunctionMode"}


def measure_one(backbone: str, precision: str, size: int, iters: int, warmup: int, threads: int,
                device: str = "cpu", infer_batch: int = 1, train_batch: int = 2, channels_last: bool = False,
                keep_host_memory: bool = True) -> dict:
    """One configuration's row. On a CPU, freed memory stays in the process as in the trainer (unless told)."""
    from mammodetr.training.host_memory import keep_freed_memory

    with keep_freed_memory(keep_host_memory and device == "cpu") as kept:
        row = _measure(backbone, precision, size, iters, warmup, threads, device, infer_batch, train_batch,
                       channels_last)
    return {**row, "keep_host_memory": kept}


def _measure(backbone, precision, size, iters, warmup, threads, device, infer_batch, train_batch, channels_last):
    import torch

    from mammodetr.inference.device import autocast

    torch.set_num_threads(threads)
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    s = _setup(backbone, size, dev, channels_last, infer_batch, train_batch)
    model = s["model"]
    x1n = model.normalize(s["x1"]).contiguous(memory_format=s["fmt"])
    model.eval()
    with torch.inference_mode():
        def run_backbone():
            with autocast(dev, precision):
                model.backbone(x1n)

        def run_full():
            with autocast(dev, precision):
                model(s["x1"])

        t_backbone, t_full, infer_ratio, _ = _timed_pair(run_backbone, run_full, iters, warmup, sync)

    step_full = _full_step(s, dev, precision, channels_last)
    t_train_cls, t_train_full, train_ratio, fastest = _timed_pair(_classifier_step(s, dev, precision, channels_last),
                                                         step_full, iters, warmup, sync)
    row = {"backbone": backbone, "precision": precision, "channels_last": channels_last, "size": size,
           "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", "threads": threads,
           "infer_batch": infer_batch, "train_batch": train_batch, "train_images_per_s": train_batch / t_train_full}
    if precision != "fp32":
        # the same model and batch in fp32, alternated with this precision: the speed-up of autocast itself
        _, t_fp32, ratio, ratio_fastest = _timed_pair(step_full, _full_step(s, dev, "fp32", channels_last), iters, 1,
                                                      sync)
        row.update({"train_full_fp32_s": t_fp32, "speedup_vs_fp32": ratio, "speedup_vs_fp32_fastest": ratio_fastest})
    n_backbone = sum(p.numel() for p in model.backbone.parameters())
    row.update({
        "params_backbone_m": n_backbone / 1e6,
        "params_heads_m": (sum(p.numel() for p in model.parameters()) - n_backbone) / 1e6,
        "infer_backbone_s": t_backbone, "infer_full_s": t_full, "infer_ratio": infer_ratio,
        "train_classifier_s": t_train_cls, "train_full_s": t_train_full, "train_ratio": train_ratio,
        "heads_share": 1 - 1 / train_ratio, "heads_share_fastest": 1 - 1 / fastest,
        "host_syncs_per_step": _count_syncs(step_full, dev),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None,
    })
    return row


def _configs(args) -> list[tuple[str, str, bool]]:
    return [(b, p, f == "channels_last") for b in args.backbones for f in args.memory_formats for p in args.precisions]


def _child(args, backbone: str, precision: str, channels_last: bool) -> dict:
    """One configuration in its own process, so peak memory is that configuration's alone."""
    cmd = [sys.executable, __file__, "--one", "--backbones", backbone, "--precisions", precision,
           "--memory-formats", "channels_last" if channels_last else "contiguous",
           "--size", str(args.size), "--iters", str(args.iters), "--warmup", str(args.warmup),
           "--threads", str(args.threads), "--device", args.device, "--infer-batch", str(args.infer_batch),
           "--train-batch", str(args.train_batch)] + (["--release-host-memory"] if args.release_host_memory else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"{backbone} {precision}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
        return {"backbone": backbone, "precision": precision, "channels_last": channels_last,
                "error": proc.stderr[-500:]}
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"  done {backbone:16s} {precision} {'CL' if channels_last else 'NCHW'}: heads share "
          f"{r['heads_share']:.1%}, syncs/step {r['host_syncs_per_step']['total']}", file=sys.stderr)
    return r


def _print_table(rows: list[dict], matcher: dict) -> None:
    header = (f"{'backbone':16s} {'prec':5s} {'fmt':4s} {'bb infer s':>10s} {'full infer s':>12s} {'ratio':>6s} "
              f"{'cls step s':>10s} {'full step s':>11s} {'heads':>6s} {'(min)':>6s} {'syncs':>5s} {'vs fp32':>7s} "
              f"{'img/s':>6s} {'peak MB':>8s}")
    print(header)
    print("-" * len(header))
    for r in rows:
        fmt = "CL" if r["channels_last"] else "NCHW"
        if "error" in r:
            print(f"{r['backbone']:16s} {r['precision']:5s} {fmt:4s} ERROR")
            continue
        speedup = f"{r['speedup_vs_fp32']:.2f}x" if "speedup_vs_fp32" in r else "-"
        print(f"{r['backbone']:16s} {r['precision']:5s} {fmt:4s} {r['infer_backbone_s']:10.3f} "
              f"{r['infer_full_s']:12.3f} {r['infer_ratio']:6.3f} {r['train_classifier_s']:10.3f} "
              f"{r['train_full_s']:11.3f} {r['heads_share']:6.1%} {r['heads_share_fastest']:6.1%} "
              f"{r['host_syncs_per_step']['total']:5d} "
              f"{speedup:>7s} {r['train_images_per_s']:6.2f} {(r['peak_gpu_mb'] or r['peak_rss_mb']):8.0f}")
    if matcher:
        print(f"matcher, {matcher['layers']} layers x batch {matcher['batch']} (K = 3, 0-3 targets): exact "
              f"{matcher['exact_ms']:.3f} ms, scipy per image and layer {matcher['scipy_ms']:.3f} ms")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", nargs="+", default=BACKBONES)
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--memory-formats", nargs="+", default=["channels_last"], choices=["contiguous", "channels_last"],
                   help="model and input memory format(s); channels-last is the fast path of the CPU's oneDNN")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--infer-batch", type=int, default=1)
    p.add_argument("--train-batch", type=int, default=2)
    p.add_argument("--release-host-memory", action="store_true",
                   help="let freed memory go back to the OS after every step (glibc's default; the trainer keeps it)")
    p.add_argument("--matcher-iters", type=int, default=200, help="0 skips the matcher timing")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "model_speed.json"))
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.one:  # child process: one configuration, JSON on stdout
        print(json.dumps(measure_one(args.backbones[0], args.precisions[0], args.size, args.iters, args.warmup,
                                     args.threads, args.device, args.infer_batch, args.train_batch,
                                     args.memory_formats[0] == "channels_last", not args.release_host_memory)))
        return 0

    matcher = _matcher_row(args)
    rows = [_child(args, *config) for config in _configs(args)]
    _print_table(rows, matcher)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"command": " ".join(["python", "bench/model_speed.py", *sys.argv[1:]]),
            "machine": platform.processor() or platform.machine(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "targets": {"infer_ratio": 1.10, "heads_share": 0.10, "host_syncs_per_step": 2, "matcher_ms": 1.0,
                        "resnet50_bf16_speedup_vs_fp32": 1.5}}
    out.write_text(json.dumps({"meta": meta, "matcher": matcher, "rows": rows}, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
