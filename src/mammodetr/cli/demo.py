"""``mammodetr demo``: the whole pipeline offline on synthetic mammograms, in minutes on a laptop CPU.

synth (DICOM) -> prepare -> split -> train a small configuration -> evaluate on the test split -> report.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from mammodetr.atomic import write_json
from mammodetr.cli import main as cli
from mammodetr.config import RunConfig, apply_overrides
from mammodetr.evaluation.evaluate import evaluate_checkpoint
from mammodetr.inference.predictor import Predictor
from mammodetr.metrics.scoring import EvaluationOptions
from mammodetr.outputs import claim_outputs, move_all_aside
from mammodetr.training.trainer import format_summary, train

DEMO_MODEL = {
    "backbone": "resnet18",
    "pretrained": "none",
    "d_model": 64,
    "nheads": 4,
    "dec_layers": 3,
    "dim_feedforward": 256,
    "feature_levels": 2,
    "dropout": 0.0,
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="demo folder (default runs/demo)")
    p.add_argument("--patients", type=int, default=150, help="synthetic patients, 4 views each")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--backbone", default=DEMO_MODEL["backbone"])
    p.add_argument("--precision", default="bf16", choices=("fp32", "bf16", "fp16"),
                   help="bf16 autocast is fast on CPUs with AMX and on recent GPUs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--bootstrap", type=int, default=500, help="bootstrap resamples for the CIs")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--overwrite", action="store_true",
                   help="a non-empty --out is moved aside to NAME.replaced-<date>-<time> (never deleted) instead of "
                        "being refused")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    for line in move_all_aside(claim_outputs({"--out": out}, {}, overwrite=args.overwrite)):
        print(line, file=sys.stderr)
    raw, data, run_dir, eval_dir = out / "synthetic", out / "dataset", out / "run", out / "evaluation"
    t0 = time.perf_counter()
    quiet = ["--no-progress"] if args.no_progress else []

    def step(title: str) -> None:
        print(f"\n== {title} ({time.perf_counter() - t0:.0f} s)", flush=True)

    step("1/5 synthetic mammograms (DICOM, four views per patient)")
    if cli(["synth", "--out", str(raw), "--patients", str(args.patients), "--size", "384", "304", "--format", "dicom",
            "--seed", str(args.seed), *quiet]) != 0:
        return 1
    step("2/5 prepare: read DICOM, crop to the breast, write 16-bit PNGs + COCO annotations")
    # Synthetic patients: the demo keeps its own id key beside the dataset instead of making one in ~/.config.
    if cli(["prepare", "--source", "csv", "--input", str(raw / "table.csv"), "--out", str(data),
            "--max-side", "512", "--id-key", str(out / "id.key")]) != 0:
        return 1
    step("3/5 patient-level split")
    if cli(["split", "--data", str(data), "--seed", str(args.seed)]) != 0:
        return 1
    step("4/5 train")
    cfg = RunConfig()
    apply_overrides(cfg, {
        "model": {**DEMO_MODEL, "backbone": args.backbone},
        "data": {"path": str(data), "image_size": args.image_size, "augment": "light", "workers": args.workers},
        "optim": {"lr": 1e-3, "backbone_lr_mult": 1.0, "warmup_epochs": 1, "grad_clip": 1.0},
        "train": {"out": str(run_dir), "epochs": args.epochs, "batch_size": args.batch_size, "patience": args.epochs,
                  "precision": args.precision, "seed": args.seed, "device": "auto"},
    })
    summary = train(cfg, progress=not args.no_progress)
    print(format_summary(summary))
    step("5/5 evaluate the best checkpoint on the test split")
    predictor = Predictor.from_checkpoint(run_dir, device="auto")
    options = EvaluationOptions(n_bootstrap=args.bootstrap, seed=args.seed)
    result = evaluate_checkpoint(predictor, data, eval_dir, options, split="test", checkpoint=run_dir)
    m = result.metrics
    headline_keys = ("auc", "sensitivity", "specificity", "accuracy", "map50", "map25", "recall25", "iou")
    headline = {k: m.get(k) for k in headline_keys}
    write_json(out / "demo_summary.json", {"test": headline, "seconds": time.perf_counter() - t0, "seed": args.seed})
    print(f"\nDone in {time.perf_counter() - t0:.0f} s. Test split ({len(result.images)} images):")
    for k, v in headline.items():
        print(f"  {k:12s} {'n/a' if v is None else f'{100 * v:5.1f}%'}")
    print(f"report: {eval_dir / 'report.html'} (and report.md, metrics.json)")
    print(f"model : {run_dir / 'checkpoints' / 'best'}")
    return 0
