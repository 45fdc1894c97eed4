"""Small-data benchmark: what each aid of issue 15 adds when labels are scarce, from scratch, on this CPU.

A label-scarce synthetic task with film artefacts from two sites (``mammodetr synth --contrast-scale 0.6``: subtle
lesions). Site a: 360 patients, 4 views each, whose film edges and burnt-in labels favour malignant patients
(``--artefact-bias 0.8``: a shortcut, as film labels were on the real films of the issue); 60 of them are labelled
(48 train + 12 validation, stratified), the other 300 only ``mammodetr pretrain`` sees. Site b: 120 test patients
(480 images) whose artefacts do not depend on the label, as at a new hospital. A ResNet18-based model (d_model 64,
3 decoder layers, two feature levels: the demo's) is trained from scratch at a fixed budget (128 px, 24 epochs,
batch 16, lr 1e-3, bf16) for each row of a cumulative ladder:

    baseline      today's defaults from scratch (backbone lr multiplier 0.1, augment light)
    +auto-lr      backbone lr multiplier auto (1.0 from scratch)
    +mask         prepare --mask-background (the rows above use the same images prepared --no-mask-background)
    +mammo-aug    augment mammo
    +ema          train.ema 0.999
    +balance      class-balanced sampling
    +tta          hflip test-time augmentation (evaluation of the +balance model, no new training)
    task balance  each option on top: det_layers mean, det warm-up, uncertainty, gradnorm (+tta)
    +pretrain     the best task balance, starting from the SimSiam-pretrained backbone
    cls-only      the same as the final row with the detection weight 0

Every row is scored on site b's 120 test patients (480 images) with 95 % patient-bootstrap CIs (AUC, Recall@.25) and,
for AUC, a paired DeLong test against the baseline and against the row it builds on. Runs are cached: a finished
row is not trained again (delete its folder to redo it), so the bench can be run in pieces.

    python bench/small_data.py                      # the whole ladder, seed 0 (about an hour on 2 busy cores)
    python bench/small_data.py --seeds 0 1 --rows baseline final cls-only
    python bench/small_data.py --quick              # smoke run: 40 patients, 64 px, 2 epochs (a few minutes)

Prints a Markdown table and writes bench/results/small_data.json.
"""

from __future__ import annotations

import argparse
import csv
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
UNMASKED = ("baseline", "auto-lr")  # trained on the dataset prepared with --no-mask-background


def _deep_merge(a: dict, b: dict) -> dict:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in a.items()}
    for k, v in b.items():
        out[k] = _deep_merge(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


def _synth(out: Path, patients: int, seed: int, bias: float, args) -> list[dict]:
    assert cli(["synth", "--out", str(out), "--patients", str(patients), "--size", *map(str, args.synth_size),
                "--format", "png", "--seed", str(seed), "--contrast-scale", str(args.contrast_scale),
                "--artefact-bias", str(bias), "--no-progress"]) == 0
    with open(out / "table.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _site_table(raw: Path, args) -> None:
    """Two synthetic sites in one table: ``a/`` (labelled + unlabelled patients, artefacts tied to malignancy by
    ``--artefact-bias``) and ``b/`` (the test patients, artefacts independent of the label, as at a new site)."""
    rows = []
    for site, patients, seed, bias in (("a", args.patients - args.test, 15, args.artefact_bias),
                                       ("b", args.test, 16, 0.0)):
        for row in _synth(raw / site, patients, seed, bias, args):
            rows.append({**row, "image_path": f"{site}/{row['image_path']}", "patient_id": f"{site}{row['patient_id']}",
                         "study_id": f"{site}{row['study_id']}"})
    with open(raw / "table.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _prepare(raw: Path, out: Path, root: Path, masked: bool) -> tuple[dict, dict]:
    """Prepare the two-site table; returns the annotations and the source map (hash -> table path)."""
    source_map = root / f"source_map_{'masked' if masked else 'raw'}.json"
    assert cli(["prepare", "--source", "csv", "--input", str(raw / "table.csv"), "--out", str(out), "--workers", "2",
                "--mask-background" if masked else "--no-mask-background", "--id-key", str(root / "id.key"),
                "--source-map", str(source_map), "--no-progress"]) == 0
    return json.loads((out / "annotations.json").read_text()), json.loads(source_map.read_text())["sources"]


def _write_subset(folder: Path, images_dir: Path, data: dict, split_of) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "images").exists():
        os.symlink(images_dir, folder / "images")
    images = [{**im, "split": split_of(im)} for im in data["images"]]
    images = [im for im in images if im["split"] is not None]
    keep = {im["id"] for im in images}
    anns = [a for a in data["annotations"] if a["image_id"] in keep]
    write_json(folder / "annotations.json", {**data, "images": images, "annotations": anns}, indent=None)


def make_data(root: Path, args) -> dict:
    """synth (two sites) -> prepare with and without masking -> ``labelled_raw/`` and ``labelled/`` (train/val from
    site a, test = site b) and ``pool/`` (site a's unlabelled patients, masked: what ``pretrain`` sees)."""
    done = root / "data.json"
    if done.is_file():
        return json.loads(done.read_text())
    raw = root / "synthetic"
    _site_table(raw, args)
    split_by_name = {}
    for masked in (False, True):
        prepared = root / ("prepared" if masked else "prepared_raw")
        data, sources = _prepare(raw, prepared, root, masked)
        if not split_by_name:
            site_a = [im for im in data["images"] if sources[im["source"]].startswith("a/")]
            n_a = args.patients - args.test
            groups, _ = assign_splits(site_a, (1 - args.labelled / n_a, args.labelled / n_a, 0.0), seed=15)
            labelled = [im for im in site_a if groups[im["id"]] == "val"]
            inner, _ = assign_splits(labelled, (0.8, 0.2, 0.0), seed=15)
            for im in data["images"]:
                site_b = sources[im["source"]].startswith("b/")
                split_by_name[im["file_name"]] = ("test", "test") if site_b else (inner.get(im["id"]), "train")
        name = "labelled" if masked else "labelled_raw"
        _write_subset(root / name, prepared / "images", data, lambda im: split_by_name[im["file_name"]][0])
        if masked:
            _write_subset(root / "pool", prepared / "images", data, lambda im: split_by_name[im["file_name"]][1])
    info = {"patients": args.patients, "labelled": args.labelled, "test": args.test,
            "artefact_bias": args.artefact_bias}
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


def resolve_ladder(results: dict) -> dict[str, tuple]:
    """The ladder with its choices made: ``tb-best`` is the task-balance row that scored best (AUC + Recall@.25),
    ``final`` is ``pretrain`` when it beat that row, else that row."""
    ladder = dict(LADDER)
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
    overrides, tta = overrides_of(name, ladder, args, root)
    if name == "pretrain":
        ensure_pretrained(root, args)
    trained_by = name
    if name == "tta":  # the same model as its parent, evaluated with TTA
        trained_by = ladder[name][0]
        run_row(trained_by, seed, ladder, args, root, info)
    run_dir = root / f"seed{seed}" / trained_by / "run"
    data = root / ("labelled_raw" if trained_by in UNMASKED else "labelled")  # the rows before masking: unmasked
    t0 = time.perf_counter()
    if not (run_dir / "summary.json").is_file():
        train(run_config(overrides, args, seed, run_dir, data), progress=False)
    train_seconds = time.perf_counter() - t0
    result = evaluate_run(run_dir, data, tta, folder / "eval", args.bootstrap)
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
    p.add_argument("--patients", type=int, default=480, help="both sites together (site b: the --test patients)")
    p.add_argument("--labelled", type=int, default=60)
    p.add_argument("--test", type=int, default=120)
    p.add_argument("--synth-size", type=int, nargs=2, default=[320, 256], metavar=("H", "W"))
    p.add_argument("--contrast-scale", type=float, default=0.6)
    p.add_argument("--artefact-bias", type=float, default=0.8, help="site a's artefact-malignancy tie (site b: 0)")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=24)
    p.add_argument("--lr", type=float, default=1e-3, help="the heads' lr (the package's 1e-4 is for pretrained "
                   "backbones; from scratch at this budget it learns nothing in any row)")
    p.add_argument("--pretrain-epochs", type=int, default=8)
    p.add_argument("--bootstrap", type=int, default=1000)
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
    root = Path(args.out).resolve()  # the subsets link to the prepared images by absolute path
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    info = make_data(root, args)
    notes = []
    results: dict[int, dict[str, dict]] = {}
    for seed in args.seeds:
        results[seed] = {}
        for name in [r for r in LADDER if r in args.rows]:
            ladder = resolve_ladder(results[seed])
            r = run_row(name, seed, ladder, args, root, info)
            if r is not None:
                results[seed][name] = r
                print(f"seed {seed} {name:15s} AUC {r['auc']:.3f} Recall@.25 {r['recall25']:.3f} "
                      f"({r['train_seconds']:.0f} s)", flush=True)
    ladder = resolve_ladder(results[args.seeds[0]])
    text = table(results, ladder, list(LADDER))
    print(text)
    for n in notes:
        print(n)
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    write_json(args.json, {
        "command": "python bench/small_data.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "budget": {k: getattr(args, k) for k in ("patients", "labelled", "test", "synth_size", "contrast_scale",
                                                 "artefact_bias", "image_size", "epochs", "lr", "pretrain_epochs",
                                                 "bootstrap")},
        "model": MODEL, "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                                    "threads": torch.get_num_threads()},
        "git": git.strip(), "seconds": time.perf_counter() - t0, "notes": notes, "table": text,
        "results": {str(s): {n: {k: v for k, v in r.items() if k not in ("scores", "labels")} for n, r in rows.items()}
                    for s, rows in results.items()},
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
