"""Data pipeline throughput: `prepare` on full-field synthetic 16-bit DICOMs, and the training loader.

Measures
  1. prepare (read -> breast crop -> cap long side -> 16-bit PNG), images/s with --workers processes, for
     uncompressed DICOM and JPEG 2000 lossless DICOM (about 3000 x 2400, from `mammodetr.data.synth`);
  2. the loader (MammoDataset at --image-size with the `light` preset) in one process = one DataLoader worker:
     cold (PNG decoded and resized every time, cache off) and warm (resized image cached as .npy).
Targets (issue 4): >= 4 images/s prepared with 2 workers on uncompressed DICOM; >= 60 images/s per loader worker.

Usage: python bench/data_speed.py [--patients 4] [--j2k-patients 2] [--size 3000 2400] [--workers 2]
Writes bench/results/data_speed.json and prints a table. Runs in about 1-2 minutes with the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path


def _prepare(table: Path, out: Path, workers: int, max_side: int) -> dict:
    from mammodetr.data.converters import convert
    from mammodetr.data.id_key import load_id_key
    from mammodetr.data.prepare import prepare_dataset
    from mammodetr.data.preprocess import PrepareOptions

    conv = convert("csv", table)
    key = load_id_key(out.parent / f"{out.name}.key")  # beside the temporary dataset, not in ~/.config
    t0, c0 = time.perf_counter(), time.process_time()
    # workers=1 runs in this process, so process_time() is the CPU time the images cost
    report = prepare_dataset(conv, out, PrepareOptions(max_side=max_side), workers=workers, progress=False,
                             log=lambda line: None, id_key=key)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    n = report["images_prepared_this_run"]
    result = {"images": n, "seconds": round(seconds, 3), "images_per_s": round(n / seconds, 2),
              "problems": len(report["problems"])}
    if workers <= 1:
        result["cpu_seconds_per_image"] = round(cpu / n, 3)
    return result


def _breakdown(table: Path, n: int, max_side: int) -> dict:
    """Median milliseconds per step of one prepare, in this process (where the time goes)."""
    import csv

    import numpy as np

    from mammodetr.data.crop import find_breast
    from mammodetr.data.image import to_uint16
    from mammodetr.data.io import read_image
    from mammodetr.data.png16 import write_png16
    from mammodetr.data.preprocess import PrepareOptions, preprocess_pixels

    with open(table, newline="") as fh:
        paths = sorted({table.parent / row["image_path"] for row in csv.DictReader(fh)})[:n]
    steps: dict[str, list] = {"read": [], "find_breast": [], "crop+flip+resize": [], "png_write": []}
    for path in paths:
        t0 = time.perf_counter()
        loaded = read_image(path)
        t1 = time.perf_counter()
        find_breast(loaded.pixels)
        t2 = time.perf_counter()
        # preprocess_pixels runs find_breast again; its own time is subtracted below
        prepared = preprocess_pixels(loaded.pixels, PrepareOptions(max_side=max_side))
        t3 = time.perf_counter()
        write_png16(table.parent / "breakdown.png", to_uint16(prepared.pixels))
        t4 = time.perf_counter()
        steps["read"].append(t1 - t0)
        steps["find_breast"].append(t2 - t1)
        steps["crop+flip+resize"].append(max(0.0, (t3 - t2) - (t2 - t1)))
        steps["png_write"].append(t4 - t3)
    return {k: round(float(np.median(v)) * 1000, 1) for k, v in steps.items()}


def _loader(root: Path, image_size: int, items: int, cache: bool, cache_dir: Path) -> dict:
    import torch

    from mammodetr.data.dataset import MammoDataset

    torch.set_num_threads(1)  # one DataLoader worker = one process with one thread
    ds = MammoDataset(root, None, image_size=image_size, augment="light", cache=cache, cache_dir=cache_dir)
    if cache:
        for i in range(len(ds)):  # warm the cache (first epoch)
            ds[i]
    t0 = time.perf_counter()
    for k in range(items):
        ds[k % len(ds)]
    seconds = time.perf_counter() - t0
    return {"items": items, "seconds": round(seconds, 3), "images_per_s": round(items / seconds, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=4, help="synthetic patients (4 images each), DICOM")
    parser.add_argument("--j2k-patients", type=int, default=2, help="patients for the JPEG 2000 run (0 = skip)")
    parser.add_argument("--size", type=int, nargs=2, default=[3000, 2400], metavar=("H", "W"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-side", type=int, default=2048)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--loader-items", type=int, default=200)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "data_speed.json"))
    parser.add_argument("--keep", action="store_true", help="keep the temporary data folder")
    args = parser.parse_args(argv)

    from mammodetr.data.synth import generate_dataset

    tmp = Path(tempfile.mkdtemp(prefix="mammodetr_bench_"))
    rows, results = [], {}
    try:
        size = tuple(args.size)
        t0 = time.perf_counter()
        generate_dataset(tmp / "dcm", n_patients=args.patients, image_size=size, fmt="dicom", seed=0,
                         progress=False)
        results["generate_seconds_dicom"] = round(time.perf_counter() - t0, 1)
        r = _prepare(tmp / "dcm" / "table.csv", tmp / "prep", args.workers, args.max_side)
        results["prepare_dicom_uncompressed"] = r
        rows.append((f"prepare, uncompressed DICOM {size[0]}x{size[1]}, {args.workers} workers",
                     r["images_per_s"], ">= 4", r["images_per_s"] >= 4))
        results["prepare_step_ms_median"] = _breakdown(tmp / "dcm" / "table.csv", 4, args.max_side)
        r1 = _prepare(tmp / "dcm" / "table.csv", tmp / "prep1", 1, args.max_side)
        results["prepare_dicom_uncompressed_1_worker"] = r1
        rows.append(("prepare, uncompressed DICOM, 1 process", r1["images_per_s"], "", None))
        # Wall-clock rates depend on what else runs on the machine; CPU time per image does much less.
        capacity = round(args.workers / r1["cpu_seconds_per_image"], 2)
        results["prepare_dicom_uncompressed_cpu_bound_estimate"] = capacity
        rows.append((f"prepare, uncompressed DICOM, {args.workers} idle cores (from CPU time)", capacity, ">= 4",
                     capacity >= 4))
        if args.j2k_patients > 0:
            t0 = time.perf_counter()
            generate_dataset(tmp / "j2k", n_patients=args.j2k_patients, image_size=size, fmt="dicom", seed=1,
                             progress=False, jpeg2000=True)
            results["generate_seconds_j2k"] = round(time.perf_counter() - t0, 1)
            rj = _prepare(tmp / "j2k" / "table.csv", tmp / "prepj", args.workers, args.max_side)
            results["prepare_dicom_jpeg2000"] = rj
            rows.append((f"prepare, JPEG 2000 DICOM, {args.workers} workers", rj["images_per_s"], "", None))
        cold = _loader(tmp / "prep", args.image_size, min(args.loader_items, 48), False, tmp / "cache")
        warm = _loader(tmp / "prep", args.image_size, args.loader_items, True, tmp / "cache")
        results["loader_cold_no_cache"] = cold
        results["loader_warm_cache"] = warm
        rows.append((f"loader {args.image_size} light, 1 worker, PNG decoded (cache off / 1st epoch)",
                     cold["images_per_s"], "", None))
        rows.append((f"loader {args.image_size} light, 1 worker, cached (later epochs)", warm["images_per_s"],
                     ">= 60", warm["images_per_s"] >= 60))
    finally:
        if args.keep:
            print(f"data kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    results["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform(),
                          "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    results["args"] = vars(args)
    width = max(len(r[0]) for r in rows)
    print(f"{'measurement':<{width}}  {'images/s':>9}  {'target':>7}  ok")
    for name, value, target, ok in rows:
        print(f"{name:<{width}}  {value:>9.1f}  {target:>7}  {'' if ok is None else 'yes' if ok else 'NO'}")
    print("prepare steps, median ms per image (1 process): "
          + ", ".join(f"{k} {v}" for k, v in results["prepare_step_ms_median"].items()))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
