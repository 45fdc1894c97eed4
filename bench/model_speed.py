"""Model speed and memory on this CPU: backbone-only vs full multi-task DETR, inference and training.

For each backbone at 512x512 (batch 1 for inference, batch 2 for a training step), fp32 and bf16 autocast:
  - backbone-only latency, full-model latency and their ratio (target <= 1.10), measured alternately so
    that load changes on a shared machine affect both; ratios are medians of per-round ratios;
  - training step of the full model (DETR losses) vs backbone + GAP + linear classifier (target <= 1.25);
  - parameter counts and peak resident memory.
Each (backbone, precision) runs in its own subprocess so peak memory is that configuration's alone.

    python bench/model_speed.py                       # all backbones, fp32 + bf16, 2 threads
    python bench/model_speed.py --backbones resnet50 --precisions bf16 --iters 3

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
from contextlib import nullcontext
from pathlib import Path

BACKBONES = ["resnet50", "convnextv2_tiny", "mambavision_t", "dinov3_vitb16"]


def _timed_pair(fn_a, fn_b, iters: int, warmup: int, sync=lambda: None) -> tuple[float, float, float]:
    """Alternate a and b, so load changes on a shared machine hit both; returns the medians of a, of b and
    of the per-round ratio b / a (the ratio is what the targets are about)."""
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
    return statistics.median(ta), statistics.median(tb), statistics.median(b / a for a, b in zip(ta, tb))


def measure_one(backbone: str, precision: str, size: int, iters: int, warmup: int, threads: int,
                device: str = "cpu", infer_batch: int = 1, train_batch: int = 2) -> dict:
    import torch
    from torch import nn

    from mammodetr import LossConfig, ModelConfig, build_criterion, build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    model = build_model(ModelConfig(backbone=backbone, pretrained="none", dropout=0.0)).to(dev)
    criterion = build_criterion(LossConfig(), num_aux=model.decoder.layers.__len__() - 1)
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
    amp = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if precision == "bf16" else nullcontext
    x1 = torch.rand(infer_batch, 1, size, size, device=dev)
    x2 = torch.rand(train_batch, 1, size, size, device=dev)
    x1n, x2n = model.normalize(x1), model.normalize(x2)
    targets = [
        {"boxes": torch.tensor([[0.4, 0.4, 0.1, 0.1]], device=dev) if i % 2 == 0 else torch.zeros(0, 4, device=dev),
         "label": torch.tensor(1 - i % 2, device=dev)}
        for i in range(train_batch)
    ]
    labels = torch.tensor([1 - i % 2 for i in range(train_batch)], device=dev)

    model.eval()
    with torch.inference_mode():
        def run_backbone():
            with amp():
                backbone_mod(x1n)

        def run_full():
            with amp():
                model(x1)

        t_backbone, t_full, infer_ratio = _timed_pair(run_backbone, run_full, iters, warmup, sync)

    model.train()
    opt_full = torch.optim.AdamW(model.parameters(), lr=1e-5)
    opt_cls = torch.optim.AdamW(classifier.parameters(), lr=1e-5)

    def step_full():
        with amp():
            loss = criterion(model(x2), targets)["loss"]
        opt_full.zero_grad(set_to_none=True)
        loss.backward()
        opt_full.step()

    def step_cls():
        with amp():
            loss = nn.functional.cross_entropy(classifier(x2n).float(), labels)
        opt_cls.zero_grad(set_to_none=True)
        loss.backward()
        opt_cls.step()

    t_train_cls, t_train_full, train_ratio = _timed_pair(step_cls, step_full, iters, warmup, sync)
    n_backbone = sum(p.numel() for p in backbone_mod.parameters())
    n_total = sum(p.numel() for p in model.parameters())
    return {
        "backbone": backbone,
        "precision": precision,
        "size": size,
        "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
        "threads": threads,
        "infer_batch": infer_batch,
        "train_batch": train_batch,
        "train_images_per_s": train_batch / t_train_full,
        "params_backbone_m": n_backbone / 1e6,
        "params_heads_m": (n_total - n_backbone) / 1e6,
        "infer_backbone_s": t_backbone,
        "infer_full_s": t_full,
        "infer_ratio": infer_ratio,
        "train_classifier_s": t_train_cls,
        "train_full_s": t_train_full,
        "train_ratio": train_ratio,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", nargs="+", default=BACKBONES)
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--infer-batch", type=int, default=1)
    p.add_argument("--train-batch", type=int, default=2)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "model_speed.json"))
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.one:  # child process: one configuration, JSON on stdout
        print(json.dumps(measure_one(args.backbones[0], args.precisions[0], args.size, args.iters, args.warmup,
                                     args.threads, args.device, args.infer_batch, args.train_batch)))
        return 0

    rows = []
    for backbone in args.backbones:
        for precision in args.precisions:
            cmd = [sys.executable, __file__, "--one", "--backbones", backbone, "--precisions", precision,
                   "--size", str(args.size), "--iters", str(args.iters), "--warmup", str(args.warmup),
                   "--threads", str(args.threads), "--device", args.device, "--infer-batch", str(args.infer_batch),
                   "--train-batch", str(args.train_batch)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{backbone} {precision}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
                rows.append({"backbone": backbone, "precision": precision, "error": proc.stderr[-500:]})
                continue
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"  done {backbone:16s} {precision}: full/backbone {r['infer_ratio']:.3f}, "
                  f"train {r['train_ratio']:.3f}", file=sys.stderr)

    header = (f"{'backbone':16s} {'prec':5s} {'params bb/heads (M)':>19s} {'bb infer s':>10s} {'full infer s':>12s} "
              f"{'ratio':>6s} {'cls step s':>10s} {'full step s':>11s} {'ratio':>6s} "
              f"{'train img/s':>11s} {'peak MB':>8s}")
    print(header)
    print("-" * len(header))
    for r in rows:
        if "error" in r:
            print(f"{r['backbone']:16s} {r['precision']:5s} ERROR")
            continue
        print(f"{r['backbone']:16s} {r['precision']:5s} {r['params_backbone_m']:9.1f}/{r['params_heads_m']:<9.2f} "
              f"{r['infer_backbone_s']:10.3f} {r['infer_full_s']:12.3f} {r['infer_ratio']:6.3f} "
              f"{r['train_classifier_s']:10.3f} {r['train_full_s']:11.3f} {r['train_ratio']:6.3f} "
              f"{r['train_images_per_s']:11.1f} {(r['peak_gpu_mb'] or r['peak_rss_mb']):8.0f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"command": " ".join(["python", "bench/model_speed.py", *sys.argv[1:]]),
            "machine": platform.processor() or platform.machine(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "targets": {"infer_ratio": 1.10, "train_ratio": 1.25}}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
