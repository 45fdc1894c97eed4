"""Small-data benchmark: what each aid of issue 15 adds when labels are scarce, from scratch, on this CPU.

A label-scarce synthetic task (``mammodetr synth --contrast-scale 0.4``: subtle lesions): 600 patients, 4 views
each; a fixed test set of 120 patients; 60 labelled patients for training (48 train + 12 validation, stratified);
the other 420 patients are unlabelled and only ``mammodetr pretrain`` sees them (with the labelled 60; never the
test patients). A ResNet18-based model (d_model 64, 3 decoder layers, two feature levels: the demo's) is trained
from scratch at a fixed budget (image size, epochs, batch 16, bf16) for each row of a cumulative ladder:

    baseline      today's defaults from scratch (backbone lr multiplier 0.1, augment light)
    +auto-lr      backbone lr multiplier auto (1.0 from scratch)
    +mask         prepare --mask-background (only when this branch's prepare has it; else skipped with a note)
    +mammo-aug    augment mammo
    +ema          train.ema 0.999
    +balance      class-balanced sampling
    +tta          hflip test-time augmentation (evaluation of the +balance model, no new training)
    task balance  each option on top: det_layers mean, det warm-up, uncertainty, gradnorm (+tta)
    +pretrain     the best task balance, starting from the SimSiam-pretrained backbone
    cls-only      the same as the final row with the detection weight 0

Every row is scored on the 120 test patients (480 images) with 95 % patient-bootstrap CIs (AUC, Recall@.25) and,
for AUC, a paired DeLong test against the baseline and against the row it builds on. Runs are cached: a finished
row is not trained again (delete its folder to redo it), so the bench can be run in pieces.

    python bench/small_data.py                      # the whole ladder, seed 0 (about 60-90 min on 2 busy cores)
    python bench/small_data.py --seeds 0 1 --rows baseline final cls-only
    python bench/small_data.py --quick              # smoke run: 40 patients, 64 px, 2 epochs (a few minutes)

Prints a Markdown table and writes bench/results/small_data.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mammodetr.atomic import write_json  # noqa: E402
from mammodetr.cli import main as cli  # noqa: E402
from mammodetr.config import PretrainConfig, RunConfig, apply_overrides  # noqa: E402
from mammodetr.data.split import assign_splits  # noqa: E402
from mammodetr.evaluation.evaluate import evaluate_split  # noqa: E402
from mammodetr.inference.predictor import Predictor  # noqa: E402
from mammodetr.metrics.delong import delong_test  # noqa: E402
from mammodetr.metrics.scoring import EvaluationOptions  # noqa: E402
from mammodetr.training.pretrain import pretrain  # noqa: E402
from mammodetr.training.trainer import train  # noqa: E402

MODEL = {"backbone": "resnet18", "pretrained": "none", "d_model": 64, "nheads": 4, "dec_layers": 3,
         "dim_feedforward": 256, "feature_levels": 2, "dropout": 0.0}
TODAY = {"optim": {"backbone_lr_mult": 0.1}, "data": {"augment": "light"}}

# name -> (builds on, what it adds, config overrides, evaluate with TTA)
LADDER: dict[str, tuple[str | None, str, dict, bool]] = {
    "baseline": (None, "today's defaults, from scratch", TODAY, False),
    "auto-lr": ("baseline", "backbone lr multiplier auto (1.0 from scratch)", {"optim": {"backbone_lr_mult": None}},
                False),
    "mask": ("auto-lr", "prepare --mask-background", {}, False),
    "mammo-aug": ("mask", "augment mammo", {"data": {"augment": "mammo"}}, False),
    "ema": ("mammo-aug", "EMA 0.999", {"train": {"ema": 0.999}}, False),
    "balance": ("ema", "class-balanced sampling", {"data": {"balance": True}}, False),
    "tta": ("balance", "hflip TTA (same model)", {}, True),
    "tb-mean": ("tta", "task balance: det loss averaged over decoder layers", {"tasks": {"det_layers": "mean"}}, True),
    "tb-warmup": ("tta", "task balance: detection weight warm-up (1/3 of the epochs)", {"tasks": {}}, True),
    "tb-uncertainty": ("tta", "task balance: uncertainty weighting", {"tasks": {"method": "uncertainty"}}, True),
    "tb-gradnorm": ("tta", "task balance: gradient-norm balancing", {"tasks": {"method": "gradnorm"}}, True),
    "pretrain": ("tb-best", "SimSiam-pretrained backbone", {}, True),
    "cls-only": ("final", "classification only (detection weight 0)", {"tasks": {"det_weight": 0.0},
                                                                       "train": {"monitor": "auc"}}, True),
}
TASK_ROWS = ("tb-mean", "tb-warmup", "tb-uncertainty", "tb-gradnorm")


def _deep_merge(a: dict, b: dict) -> dict:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in a.items()}
    for k, v in b.items():
        out[k] = _deep_merge(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


def has_mask_background() -> bool:
    from mammodetr.data.preprocess import PrepareOptions

    return "mask_background" in PrepareOptions.__dataclass_fields__


def make_data(root: Path, args) -> dict:
    """synth -> prepare -> patient groups: ``labelled/`` (train/val/test) and ``pool/`` (pretraining images)."""
    done = root / "data.json"
    if done.is_file():
        return json.loads(done.read_text())
    raw, prepared = root / "synthetic", root / "prepared"
    quiet = ["--no-progress"]
    assert cli(["synth", "--out", str(raw), "--patients", str(args.patients), "--size", *map(str, args.synth_size),
                "--format", "png", "--seed", "15", "--contrast-scale", str(args.contrast_scale), *quiet]) == 0
    mask = ["--mask-background"] if args.mask and has_mask_background() else []
    assert cli(["prepare", "--source", "csv", "--input", str(raw / "table.csv"), "--out", str(prepared),
                "--workers", "2", *mask]) == 0
    data = json.loads((prepared / "annotations.json").read_text())
    n = args.patients
    groups, _ = assign_splits(data["images"], (1 - (args.labelled + args.test) / n, args.labelled / n, args.test / n),
                              seed=15)  # train = unlabelled pool, val = labelled, test = test
    labelled = [im for im in data["images"] if groups[im["id"]] == "val"]
    inner, _ = assign_splits(labelled, (0.8, 0.2, 0.0), seed=15)
    for name, split_of in (("labelled", lambda im: {"val": inner.get(im["id"]), "test": "test"}.get(groups[im["id"]])),
                           ("pool", lambda im: "test" if groups[im["id"]] == "test" else "train")):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "images").exists():
            os.symlink(prepared / "images", folder / "images")
        images = [{**im, "split": split_of(im)} for im in data["images"]]
        images = [im for im in images if im["split"] is not None]
        keep = {im["id"] for im in images}
        anns = [a for a in data["annotations"] if a["image_id"] in keep]
        write_json(folder / "annotations.json", {**data, "images": images, "annotations": anns}, indent=None)
    info = {"masked": bool(mask), "patients": n, "labelled": args.labelled, "test": args.test}
    write_json(done, info)
    return info


def run_config(row_overrides: dict, args, seed: int, out: Path, data: Path) -> RunConfig:
    cfg = RunConfig()
    base = {"model": MODEL, "data": {"path": str(data), "image_size": args.image_size, "workers": 0},
            "optim": {"lr": args.lr},
            "train": {"out": str(out), "epochs": args.epochs, "batch_size": 16, "patience": args.epochs,
                      "precision": "bf16", "seed": seed, "device": "cpu"}}
    apply_overrides(cfg, _deep_merge(base, row_overrides))
    return cfg


def evaluate_run(run_dir: Path, data: Path, tta: bool, out: Path, n_bootstrap: int) -> dict:
    predictor = Predictor.from_checkpoint(run_dir, device="cpu", tta=tta, batch_size=32)
    options = EvaluationOptions(n_bootstrap=n_bootstrap, max_dets=predictor.config.model.num_queries)
    # No Grad-CAM section: the metrics are what the ladder compares.
    result = evaluate_split(data, out, predictor.predict_prepared(data, "test"), options, split="test",
                            source={"checkpoint": str(run_dir), "tta": tta}, report=False)
    m = result.metrics
    scores = {im.file_name: p.p_malignant for im, p in zip(result.images, result.predictions)}
    return {"auc": m["auc"], "auc_ci": m["ci"].get("auc"), "recall25": m["recall25"],
            "recall25_ci": m["ci"].get("recall25"), "map25": m["map25"], "sensitivity": m["sensitivity"],
            "specificity": m["specificity"], "labels": {im.file_name: im.label for im in result.images},
            "scores": scores}


def _score(r: dict) -> float:
    return r["auc"] + r["recall25"]


def resolve_ladder(results: dict, masked: bool) -> dict[str, tuple]:
    """The ladder with its choices made: ``tb-best`` is the task-balance row that scored best (AUC + Recall@.25),
    ``final`` is ``pretrain`` when it beat that row, else that row; without masking, mammo-aug builds on auto-lr."""
    ladder = dict(LADDER)
    if not masked:
        ladder["mammo-aug"] = ("auto-lr", *LADDER["mammo-aug"][1:])
    measured = [r for r in TASK_ROWS if r in results]
    best = max(measured, key=lambda r: _score(results[r])) if measured else TASK_ROWS[-1]
    final = "pretrain" if "pretrain" in results and best in results and _score(results["pretrain"]) > _score(
        results[best]) else best
    bound = {"tb-best": best, "final": final}
    return {name: (bound.get(parent, parent), *rest) for name, (parent, *rest) in ladder.items()}


def overrides_of(name: str, ladder: dict, args, root: Path) -> tuple[dict, bool]:
    """A row's overrides: those of its ancestors, then its own."""
    parent, _, own, tta = ladder[name]
    base = overrides_of(parent, ladder, args, root)[0] if parent else {}
    own = dict(own)
    if name == "tb-warmup":
        own = {"tasks": {"det_warmup_epochs": round(args.epochs / 3, 1)}}
    if name == "pretrain":
        own = {"model": {"pretrained": str(root / "pretrain" / "backbone.safetensors")}}
    return _deep_merge(base, own), tta


def ensure_pretrained(root: Path, args) -> None:
    out = root / "pretrain"
    if (out / "summary.json").is_file():
        return
    cfg = PretrainConfig(data=str(root / "pool"), out=str(out), backbone=MODEL["backbone"], image_size=args.image_size,
                         epochs=args.pretrain_epochs, batch_size=32, precision="bf16", workers=0, device="cpu",
                         proj_dim=256, pred_dim=64, lr=1e-3, warmup_epochs=1)
    pretrain(cfg, resume=(out / "checkpoints" / "last").exists(), progress=False)


def run_row(name: str, seed: int, ladder: dict, args, root: Path, info: dict) -> dict | None:
    folder = root / f"seed{seed}" / name
    result_file = folder / "result.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    if name == "mask" and not info["masked"]:
        return None
    overrides, tta = overrides_of(name, ladder, args, root)
    if name == "pretrain":
        ensure_pretrained(root, args)
    trained_by = name
    if name == "tta":  # the same model as its parent, evaluated with TTA
        trained_by = ladder[name][0]
        run_row(trained_by, seed, ladder, args, root, info)
    run_dir = root / f"seed{seed}" / trained_by / "run"
    t0 = time.perf_counter()
    if not (run_dir / "summary.json").is_file():
        train(run_config(overrides, args, seed, run_dir, root / "labelled"), progress=False)
    train_seconds = time.perf_counter() - t0
    result = evaluate_run(run_dir, root / "labelled", tta, folder / "eval", args.bootstrap)
    summary = json.loads((run_dir / "summary.json").read_text())
    result.update(row=name, seed=seed, builds_on=ladder[name][0], adds=ladder[name][1], overrides=overrides, tta=tta,
                  best_epoch=summary["best_epoch"], train_seconds=summary["seconds"],
                  wall_seconds=train_seconds)
    write_json(result_file, result)
    return result


def _paired_p(a: dict, b: dict) -> float | None:
    names = sorted(a["scores"])
    y = [a["labels"][n] for n in names]
    return delong_test(y, [a["scores"][n] for n in names], [b["scores"][n] for n in names]).p_value


def table(results: dict[int, dict[str, dict]], ladder: dict, order: list[str]) -> str:
    def ci(v):
        return f"{v['low']:.3f}-{v['high']:.3f}" if v else "n/a"

    lines = ["| row | adds | seed | AUC (95% CI) | Recall@.25 (95% CI) | mAP@.25 | p vs baseline | p vs previous |",
             "|---|---|---:|---|---|---:|---:|---:|"]
    for seed, rows in results.items():
        for name in order:
            r = rows.get(name)
            if r is None:
                continue
            base, prev = rows.get("baseline"), rows.get(ladder[name][0]) if ladder[name][0] else None
            pb = f"{_paired_p(r, base):.3f}" if base and name != "baseline" else ""
            pp = f"{_paired_p(r, prev):.3f}" if prev else ""
            lines.append(f"| {name} | {r['adds']} | {seed} | {r['auc']:.3f} ({ci(r['auc_ci'])}) | "
                         f"{r['recall25']:.3f} ({ci(r['recall25_ci'])}) | {r['map25']:.3f} | {pb} | {pp} |")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "runs" / "bench_small_data"), help="work folder (cached runs)")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny data, 64 px, 2 epochs")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--rows", nargs="+", default=list(LADDER), help=f"rows to run (default all: {' '.join(LADDER)})")
    p.add_argument("--patients", type=int, default=600)
    p.add_argument("--labelled", type=int, default=60)
    p.add_argument("--test", type=int, default=120)
    p.add_argument("--synth-size", type=int, nargs=2, default=[320, 256], metavar=("H", "W"))
    p.add_argument("--contrast-scale", type=float, default=0.4)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=36)
    p.add_argument("--lr", type=float, default=RunConfig().optim.lr, help="the heads' lr (default: the package's)")
    p.add_argument("--pretrain-epochs", type=int, default=12)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--mask", action=argparse.BooleanOptionalAction, default=True,
                   help="include the masking row (needs prepare --mask-background; skipped with a note if absent)")
    p.add_argument("--json", default=str(ROOT / "bench" / "results" / "small_data.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.patients, args.labelled, args.test, args.synth_size = 40, 12, 12, [192, 160]
        args.image_size, args.epochs, args.pretrain_epochs, args.bootstrap = 64, 2, 1, 100
        args.out = args.out + "_quick"
        args.json = str(Path(args.json).with_name("small_data_quick.json"))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    info = make_data(root, args)
    notes = [] if info["masked"] else ["mask: skipped (this branch's prepare has no --mask-background, or --no-mask)"]
    results: dict[int, dict[str, dict]] = {}
    for seed in args.seeds:
        results[seed] = {}
        for name in [r for r in LADDER if r in args.rows]:
            ladder = resolve_ladder(results[seed], info["masked"])
            r = run_row(name, seed, ladder, args, root, info)
            if r is not None:
                results[seed][name] = r
                print(f"seed {seed} {name:15s} AUC {r['auc']:.3f} Recall@.25 {r['recall25']:.3f} "
                      f"({r['train_seconds']:.0f} s)", flush=True)
    ladder = resolve_ladder(results[args.seeds[0]], info["masked"])
    text = table(results, ladder, list(LADDER))
    print(text)
    for n in notes:
        print(n)
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    write_json(args.json, {
        "command": "python bench/small_data.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "budget": {k: getattr(args, k) for k in ("patients", "labelled", "test", "synth_size", "contrast_scale",
                                                 "image_size", "epochs", "lr", "pretrain_epochs", "bootstrap")},
        "model": MODEL, "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                                    "threads": torch.get_num_threads()},
        "git": git.strip(), "seconds": time.perf_counter() - t0, "notes": notes, "table": text,
        "results": {str(s): {n: {k: v for k, v in r.items() if k not in ("scores", "labels")} for n, r in rows.items()}
                    for s, rows in results.items()},
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
