"""Build a prepared dataset folder from converter records: 16-bit PNGs, COCO annotations, a report.

Output folder::

    images/<opaque id>.png    16-bit grayscale, breast-cropped, optionally side-flipped, long side capped
    annotations.json          COCO + per-image extras (patient_id, label, laterality, view, study_id, source,
                              transform, official_split, split); annotation bbox [x, y, w, h] in PREPARED pixels
    prepare_report.json       counts and every problem (file, problem, action)
    prepare_state.json        the salt for opaque ids and, per image, the source's size/mtime so a re-run
                              skips images already prepared

Images are prepared in parallel worker processes; boxes are mapped in the main process with each image's
recorded transform. Each problem is printed as one line naming the file and what is wrong; the rest of the
dataset is still prepared.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import secrets
import struct
import sys
import time
import zlib
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from mammodetr.data.geometry import ImageTransform
from mammodetr.data.preprocess import PrepareOptions, preprocess_image
from mammodetr.data.records import LABELS, Conversion, ImageRecord, Problem, opaque_id

__all__ = ["prepare_dataset", "write_json_atomic", "save_png16", "encode_png16", "map_box", "STATE_FILE"]

STATE_FILE = "prepare_state.json"
ANNOTATIONS_FILE = "annotations.json"
REPORT_FILE = "prepare_report.json"
CATEGORIES = [{"id": 1, "name": "lesion", "supercategory": "lesion"}]
# Differences below this many prepared pixels are rounding of the resize, not a box leaving the crop.
_CLIP_TOLERANCE_PX = 0.5


def write_json_atomic(path: Path, data) -> None:
    """Write JSON via a temporary file and ``os.replace`` so readers never see a half-written file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png16(u16: np.ndarray) -> bytes:
    """Encode a (H, W) uint16 array as a 16-bit grayscale PNG.

    Pillow's encoder spends most of a prepare step's time here; this one uses the PNG "Up" filter on every row
    (mammograms are smooth from row to row) and zlib's run-length strategy, which is about 3x faster than
    Pillow at compress level 1 and gives a slightly smaller file. Any PNG reader decodes it.
    """
    h, w = u16.shape
    rows = np.ascontiguousarray(u16, dtype=">u2").view(np.uint8).reshape(h, 2 * w)
    filtered = np.empty((h, 2 * w + 1), np.uint8)
    filtered[:, 0] = 2  # filter type Up: byte minus the byte above (mod 256)
    filtered[0, 0] = 0  # first row: no row above, filter None
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    comp = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    data = comp.compress(filtered.tobytes()) + comp.flush()
    header = struct.pack(">IIBBBBB", w, h, 16, 0, 0, 0, 0)  # 16-bit, grayscale, deflate, adaptive, no interlace
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


def save_png16(pixels, path: Path) -> None:
    """Save a (H, W) float image in [0, 1] as a 16-bit grayscale PNG (atomically: temp file + rename)."""
    scaled = np.clip(np.asarray(pixels, dtype=np.float32), 0.0, 1.0)
    scaled *= np.float32(65535.0)
    scaled += np.float32(0.5)
    u16 = scaled.astype(np.uint16)  # truncation after +0.5 = rounding
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    tmp.write_bytes(encode_png16(u16))
    os.replace(tmp, path)


@dataclass(frozen=True)
class _Job:
    index: int
    source: str
    out_png: str
    laterality: Optional[str]
    view: Optional[str]
    options: PrepareOptions


def _prepare_one(job: _Job) -> dict:
    """Worker: prepare one image and write its PNG. Never raises: failures come back as ``{"error": ...}``."""
    from mammodetr.data.io import ImageReadError

    try:
        prepared = preprocess_image(job.source, job.options, laterality=job.laterality, view=job.view)
        save_png16(prepared.pixels, Path(job.out_png))
    except ImageReadError as exc:
        return {"index": job.index, "error": exc.reason}
    except Exception as exc:  # noqa: BLE001 - one bad file must not stop the dataset
        return {"index": job.index, "error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"}
    h, w = prepared.pixels.shape
    return {
        "index": job.index,
        "transform": prepared.transform.to_dict(),
        "height": int(h),
        "width": int(w),
        "laterality": prepared.laterality,
        "view": prepared.view,
        "crop_fallback": prepared.crop_fallback,
        "crop_reason": prepared.crop_reason,
        "side_mismatch": prepared.side_mismatch,
        "breast_side": prepared.breast_side,
    }


def _mp_context():
    # fork starts a worker in milliseconds where spawn re-imports the package (with torch: seconds per worker).
    # Workers only use numpy/Pillow/pydicom, never torch's thread pools, so forking is safe here.
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def map_box(box_xyxy: list[float], transform: ImageTransform) -> tuple[Optional[list[float]], Optional[str], str]:
    """Check one original-pixel box and map it to prepared pixels.

    Returns:
        ``(box_xyxy_prepared or None, problem text or None, action)``: a box with NaN/inf corners or zero area is
        dropped (``None``); a box reaching outside the image or the breast crop is clipped with a problem text.
    """
    b = np.asarray(box_xyxy, dtype=np.float64)
    if not np.all(np.isfinite(b)):
        return None, f"box {box_xyxy} has a NaN or infinite corner", "skipped box"
    if b[2] <= b[0] or b[3] <= b[1]:
        return None, f"box {box_xyxy} is degenerate (zero or negative width/height)", "skipped box"
    h, w = transform.input_size_hw
    clipped = np.array([min(max(b[0], 0), w), min(max(b[1], 0), h), min(max(b[2], 0), w), min(max(b[3], 0), h)])
    problem, action = None, ""
    if not np.array_equal(clipped, b):
        if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
            return None, f"box {box_xyxy} lies outside the {h}x{w} image", "skipped box"
        problem, action = f"box {box_xyxy} extends outside the {h}x{w} image", "clipped box"
    out = transform.apply_boxes_xyxy(clipped)[0]
    oh, ow = transform.output_size_hw
    inside = np.array([min(max(out[0], 0), ow), min(max(out[1], 0), oh),
                       min(max(out[2], 0), ow), min(max(out[3], 0), oh)])
    if inside[2] - inside[0] <= 0 or inside[3] - inside[1] <= 0:
        return None, f"box {box_xyxy} lies outside the breast crop", "skipped box"
    if np.max(np.abs(inside - out)) > _CLIP_TOLERANCE_PX and problem is None:
        problem, action = f"box {box_xyxy} extends beyond the breast crop", "clipped box"
    return [float(v) for v in inside], problem, action


def _stat_key(path: Path) -> Optional[list[int]]:
    try:
        st = path.stat()
    except OSError:
        return None
    return [int(st.st_size), int(st.st_mtime_ns)]


def _options_hash(options: PrepareOptions) -> str:
    return hashlib.sha256(json.dumps(options.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def _load_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _source_name(record: ImageRecord, root: Optional[Path]) -> str:
    if root is not None:
        try:
            return str(record.image_path.resolve().relative_to(Path(root).resolve()))
        except ValueError:
            pass
    return str(record.image_path)


def prepare_dataset(
    conversion: Conversion,
    out_dir: str | Path,
    options: PrepareOptions = PrepareOptions(),
    *,
    workers: Optional[int] = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Prepare every record of a conversion into ``out_dir`` (see the module docstring for the layout).

    Args:
        conversion: records and problems from a converter.
        out_dir: output folder (created; an earlier run's images are reused when unchanged).
        options: preprocessing options (the same ones ``predict`` must use later; stored in annotations.json).
        workers: worker processes (default: all CPU cores; 0 or 1 runs in this process).
        progress: show a tqdm progress bar.
        log: where each problem line goes (default: stderr, through tqdm so the bar stays intact).

    Returns:
        The report dict also written to ``prepare_report.json``.
    """
    from tqdm import tqdm

    t0 = time.perf_counter()
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    emit = log or (lambda line: tqdm.write(line, file=sys.stderr))
    problems: list[Problem] = []

    def report(problem: Problem) -> None:
        problems.append(problem)
        emit(problem.line())

    for p in conversion.problems:
        report(p)

    state = _load_json(out / STATE_FILE) or {}
    salt = state.get("salt") or secrets.token_hex(16)
    old_entries: dict = state.get("images", {})
    old_annotations = _load_json(out / ANNOTATIONS_FILE) or {}
    old_splits = {img.get("file_name"): img.get("split") for img in old_annotations.get("images", [])}
    opt_hash = _options_hash(options)

    # Unique, existing images only; duplicates and missing files are reported once each.
    records: list[ImageRecord] = []
    seen_keys: dict[str, str] = {}
    seen_paths: dict[Path, str] = {}
    for rec in sorted(conversion.records, key=lambda r: r.key):
        where = _source_name(rec, conversion.input_root)
        resolved = rec.image_path.resolve()
        if rec.key in seen_keys or resolved in seen_paths:
            first = seen_keys.get(rec.key) or seen_paths.get(resolved)
            report(Problem(where, f"duplicate image id {rec.key!r} (also {first})", "skipped image"))
            continue
        seen_keys[rec.key] = where
        seen_paths[resolved] = where
        if not rec.image_path.is_file():
            report(Problem(where, "image file not found", "skipped image"))
            continue
        records.append(rec)

    names = [hashlib.sha256(f"{salt}\x00{conversion.source}\x00{r.key}".encode()).hexdigest()[:20] + ".png"
             for r in records]
    stats = [_stat_key(r.image_path) for r in records]
    results: dict[int, dict] = {}
    jobs: list[_Job] = []
    for i, (rec, name, st) in enumerate(zip(records, names, stats)):
        old = old_entries.get(name)
        if (old and old.get("stat") == st and old.get("options") == opt_hash
                and old.get("laterality_in") == rec.laterality and (out / "images" / name).is_file()):
            results[i] = dict(old["result"], index=i)
            continue
        jobs.append(_Job(i, str(rec.image_path), str(out / "images" / name), rec.laterality, rec.view, options))
    reused = len(records) - len(jobs)

    n_workers = (os.cpu_count() or 1) if workers is None else max(0, int(workers))
    bar = tqdm(total=len(jobs), desc="prepare", unit="img", disable=not progress or not jobs, file=sys.stderr)
    try:
        if n_workers <= 1 or len(jobs) <= 1:
            iterator = map(_prepare_one, jobs)
            for res in iterator:
                results[res["index"]] = res
                bar.update(1)
        else:
            chunksize = max(1, min(16, len(jobs) // (n_workers * 4)))
            try:
                with ProcessPoolExecutor(max_workers=min(n_workers, len(jobs)), mp_context=_mp_context()) as pool:
                    for res in pool.map(_prepare_one, jobs, chunksize=chunksize):
                        results[res["index"]] = res
                        bar.update(1)
            except BrokenProcessPool:
                # A worker died (e.g. a decoder crashed on a corrupt file): retry the unfinished images one per
                # fresh process, so only the file that kills its process is lost.
                for job in (j for j in jobs if j.index not in results):
                    try:
                        with ProcessPoolExecutor(max_workers=1, mp_context=_mp_context()) as single:
                            results[job.index] = single.submit(_prepare_one, job).result()
                    except BrokenProcessPool:
                        results[job.index] = {"index": job.index, "error": "the worker process died reading it"}
                    bar.update(1)
    finally:
        bar.close()

    images_out, annotations_out = [], []
    new_entries: dict = {}
    label_counts: Counter = Counter()
    split_counts: Counter = Counter()
    n_with_boxes = n_boxes = 0
    crop_fallbacks, side_mismatches = [], []
    for i, rec in enumerate(records):
        res = results[i]
        where = _source_name(rec, conversion.input_root)
        if "error" in res:
            report(Problem(where, res["error"], "skipped image"))
            continue
        name = names[i]
        new_entries[name] = {"stat": stats[i], "options": opt_hash, "laterality_in": rec.laterality,
                             "result": {k: v for k, v in res.items() if k != "index"}}
        transform = ImageTransform.from_dict(res["transform"])
        image_id = len(images_out) + 1
        if res["crop_fallback"]:
            crop_fallbacks.append({"file_name": name, "source": where, "reason": res["crop_reason"]})
            report(Problem(where, f"breast crop fell back to the whole image ({res['crop_reason']})", "note"))
        if res["side_mismatch"]:
            side_mismatches.append({"file_name": name, "source": where})
            report(Problem(where, "laterality tag and the side the breast lies on disagree; flipped by the tag",
                           "note"))
        boxes_kept = 0
        for box in rec.boxes:
            mapped, problem, action = map_box(box.as_list(), transform)
            if problem:
                report(Problem(where, problem, action))
            if mapped is None:
                continue
            x1, y1, x2, y2 = mapped
            annotations_out.append({
                "id": len(annotations_out) + 1, "image_id": image_id, "category_id": 1,
                "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                "area": round((x2 - x1) * (y2 - y1), 3), "iscrowd": 0,
                "pathology": box.pathology, "lesion_type": box.lesion_type,
            })
            boxes_kept += 1
        n_boxes += boxes_kept
        n_with_boxes += boxes_kept > 0
        label_counts[rec.label] += 1
        split = old_splits.get(f"images/{name}")
        split_counts[split or "unassigned"] += 1
        images_out.append({
            "id": image_id, "file_name": f"images/{name}", "width": res["width"], "height": res["height"],
            "patient_id": opaque_id("patient", rec.patient_id, salt),
            "label": rec.label,
            "laterality": res["laterality"] or rec.laterality,
            "view": res["view"] or rec.view,
            "study_id": opaque_id("study", rec.study_id, salt) if rec.study_id else None,
            "source": where,
            "official_split": rec.official_split,
            "split": split,
            "crop_fallback": res["crop_fallback"],
            "transform": res["transform"],
            "extra": rec.extra,
        })
    elapsed = time.perf_counter() - t0
    annotations = {
        "info": {"description": "mammodetr prepared dataset", "source": conversion.source,
                 "prepare": options.to_dict(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        "images": images_out,
        "annotations": annotations_out,
        "categories": CATEGORIES,
    }
    write_json_atomic(out / ANNOTATIONS_FILE, annotations)
    write_json_atomic(out / STATE_FILE, {"salt": salt, "images": new_entries})
    prepared_now = len(jobs) - sum("error" in results[j.index] for j in jobs)
    report_data = {
        "source": conversion.source,
        "images_in_source": len(conversion.records),
        "images_prepared": len(images_out),
        "images_prepared_this_run": prepared_now,
        "images_reused_from_earlier_run": reused,
        "images_skipped": len(conversion.records) - len(images_out),
        "labels": {lab: label_counts.get(lab, 0) for lab in LABELS},
        "images_with_boxes": n_with_boxes,
        "images_without_boxes": len(images_out) - n_with_boxes,
        "boxes": n_boxes,
        "splits": dict(split_counts),
        "crop_fallbacks": crop_fallbacks,
        "side_mismatches": side_mismatches,
        "problems": [p.to_dict() for p in problems],
        "problem_counts": dict(Counter(p.action for p in problems)),
        "options": options.to_dict(),
        "workers": n_workers,
        "seconds": round(elapsed, 3),
        "images_per_second_this_run": round(prepared_now / elapsed, 3) if elapsed > 0 and prepared_now else None,
    }
    write_json_atomic(out / REPORT_FILE, report_data)
    return report_data
