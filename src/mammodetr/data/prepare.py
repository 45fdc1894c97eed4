"""Build a prepared dataset folder from converter records: 16-bit PNGs, COCO annotations, a report.

Output folder::

    images/<opaque id>.png    16-bit grayscale, breast-cropped, background-masked, optionally side-flipped, long
                              side capped
    annotations.json          COCO + per-image extras (patient_id, label, laterality, view, study_id, source,
                              transform, background_mask, official_split, split); annotation bbox [x, y, w, h] in
                              PREPARED pixels
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
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from tqdm import tqdm

from mammodetr.atomic import write_json
from mammodetr.data.counts import count_table
from mammodetr.data.geometry import ImageTransform
from mammodetr.data.image import ImageReadError, to_uint16
from mammodetr.data.png16 import write_png16
from mammodetr.data.preprocess import PrepareOptions, preprocess_image
from mammodetr.data.records import LABELS, Conversion, ImageRecord, Problem, opaque_id

__all__ = ["prepare_dataset", "default_options", "map_box", "STATE_FILE", "ANNOTATIONS_FILE", "REPORT_FILE"]

STATE_FILE = "prepare_state.json"
ANNOTATIONS_FILE = "annotations.json"
REPORT_FILE = "prepare_report.json"
CATEGORIES = [{"id": 1, "name": "lesion", "supercategory": "lesion"}]
# Differences below this many prepared pixels are rounding of the resize, not a box leaving the crop.
_CLIP_TOLERANCE_PX = 0.5


@dataclass(frozen=True)
class _Job:
    index: int
    source: str
    out_png: str
    laterality: Optional[str]
    view: Optional[str]
    options: PrepareOptions
    boxes: tuple = ()  # the lesion boxes (original pixels): background masking never touches them


def _prepare_one(job: _Job) -> dict:
    """Worker: prepare one image and write its PNG. Never raises: failures come back as ``{"error": ...}``."""
    try:
        prepared = preprocess_image(job.source, job.options, laterality=job.laterality, view=job.view,
                                    keep_boxes_xyxy=job.boxes)
        write_png16(job.out_png, to_uint16(prepared.pixels))
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
        "background_mask": prepared.background_mask,
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
    return hashlib.sha256(json.dumps(options.identity(), sort_keys=True).encode()).hexdigest()[:16]


def _boxes_key(record: ImageRecord, options: PrepareOptions) -> Optional[str]:
    """What the prepared pixels depend on in the record's boxes: masking keeps them, so they count when it is on."""
    if not options.mask_background:
        return None
    text = json.dumps([box.as_list() for box in record.boxes])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def default_options(out_dir: str | Path) -> PrepareOptions:
    """The default options for preparing into ``out_dir``: background masking on for a new dataset, and as recorded
    for an existing one (off for one prepared before masking existed), so re-running ``prepare`` on a dataset
    never switches masking by default and masked and unmasked images are never mixed.
    """
    recorded = (_load_json(Path(out_dir) / ANNOTATIONS_FILE) or {}).get("info", {}).get("prepare")
    if not isinstance(recorded, dict):
        return PrepareOptions()
    return PrepareOptions(mask_background=bool(PrepareOptions.upgraded(recorded)["mask_background"]))


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




def _log_to_stderr(line: str) -> None:
    tqdm.write(line, file=sys.stderr)  # through tqdm, so a progress bar on the terminal stays intact


@dataclass
class _Run:
    """One :func:`prepare_dataset` call: its inputs, what an earlier run left, and the problems met so far.

    Attributes:
        conversion: The converter's records and problems.
        out: The output folder.
        options: Preprocessing options.
        emit: Where each problem line goes.
        salt: Salt of the opaque file names and ids (kept from an earlier run, so names stay stable).
        old_entries: The earlier run's state, per file name (source stat, options hash, worker result).
        old_splits: The earlier run's split per ``file_name`` (``mammodetr split`` writes them).
        options_hash: Hash of ``options``; an image prepared with other options is prepared again.
        problems: Every problem reported, in order.
    """

    conversion: Conversion
    out: Path
    options: PrepareOptions
    emit: Callable[[str], None]
    salt: str
    old_entries: dict
    old_splits: dict
    options_hash: str
    problems: list[Problem] = field(default_factory=list)

    def report(self, problem: Problem) -> None:
        self.problems.append(problem)
        self.emit(problem.line())

    def where(self, record: ImageRecord) -> str:
        return _source_name(record, self.conversion.input_root)


@dataclass
class _Plan:
    """The images to prepare and how.

    Attributes:
        records: Unique records whose image file exists, in key order; index ``i`` names an image everywhere.
        names: Output file name per record (a salted hash of the source and key).
        stats: Source ``[size, mtime_ns]`` per record (None when it cannot be read).
        results: Worker result per record index: filled from the earlier run for reused images, then by the jobs.
        jobs: One per image that needs preparing in this run.
    """

    records: list[ImageRecord]
    names: list[str]
    stats: list[Optional[list[int]]]
    results: dict[int, dict]
    jobs: list[_Job]


@dataclass
class _Dataset:
    """The contents of annotations.json and prepare_state.json, and the counts the report gives.

    Attributes:
        images: COCO image entries.
        annotations: COCO annotation entries (bbox in prepared pixels).
        state_entries: prepare_state.json's ``images``, per file name.
        label_counts: Images per label.
        split_counts: Images per split kept from an earlier ``mammodetr split`` ("unassigned" otherwise).
        n_with_boxes: Images with at least one box kept.
        n_boxes: Boxes kept.
        crop_fallbacks: Images whose breast crop fell back to the whole image.
        side_mismatches: Images whose laterality tag and breast side disagree.
    """

    images: list[dict] = field(default_factory=list)
    annotations: list[dict] = field(default_factory=list)
    state_entries: dict = field(default_factory=dict)
    label_counts: Counter = field(default_factory=Counter)
    split_counts: Counter = field(default_factory=Counter)
    n_with_boxes: int = 0
    n_boxes: int = 0
    crop_fallbacks: list[dict] = field(default_factory=list)
    side_mismatches: list[dict] = field(default_factory=list)


def prepare_dataset(
    conversion: Conversion,
    out_dir: str | Path,
    options: PrepareOptions | None = None,
    *,
    workers: Optional[int] = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Prepare every record of a conversion into ``out_dir`` (see the module docstring for the layout).

    Args:
        conversion: records and problems from a converter.
        out_dir: output folder (created; an earlier run's images are reused when unchanged).
        options: preprocessing options (default :func:`default_options`; the same ones ``predict`` must use
            later; stored in annotations.json).
        workers: worker processes (default: all CPU cores; 0 or 1 runs in this process).
        progress: show a tqdm progress bar.
        log: where each problem line goes (default: stderr, through tqdm so the bar stays intact).

    Returns:
        The report dict also written to ``prepare_report.json``.
    """
    t0 = time.perf_counter()
    run = _start(conversion, Path(out_dir), options or default_options(out_dir), log or _log_to_stderr)
    plan = _plan(run, _unique_records(run))
    n_workers = (os.cpu_count() or 1) if workers is None else max(0, int(workers))
    _run_jobs(plan, n_workers, progress)
    dataset = _assemble(run, plan)
    return _write_outputs(run, plan, dataset, n_workers, time.perf_counter() - t0)


def _start(conversion: Conversion, out: Path, options: PrepareOptions, emit: Callable[[str], None]) -> _Run:
    """Create the output folder, report the converter's problems, and load what an earlier run left."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    state = _load_json(out / STATE_FILE) or {}
    old_annotations = _load_json(out / ANNOTATIONS_FILE) or {}
    run = _Run(
        conversion=conversion,
        out=out,
        options=options,
        emit=emit,
        salt=state.get("salt") or secrets.token_hex(16),
        old_entries=state.get("images", {}),
        old_splits={img.get("file_name"): img.get("split") for img in old_annotations.get("images", [])},
        options_hash=_options_hash(options),
    )
    for problem in conversion.problems:
        run.report(problem)
    _note_masking_change(run, old_annotations)
    return run


def _note_masking_change(run: _Run, old_annotations: dict) -> None:
    recorded = old_annotations.get("info", {}).get("prepare")
    if isinstance(recorded, dict) and old_annotations.get("images"):
        was = bool(PrepareOptions.upgraded(recorded)["mask_background"])
        if was != run.options.mask_background:
            now = "on" if run.options.mask_background else "off"
            run.report(Problem(str(run.out), f"background masking turned {now} (it was {'on' if was else 'off'}); "
                                             f"every image is prepared again", "note"))


def _unique_records(run: _Run) -> list[ImageRecord]:
    """Unique, existing images only; duplicates and missing files are reported once each."""
    records: list[ImageRecord] = []
    seen_keys: dict[str, str] = {}
    seen_paths: dict[Path, str] = {}
    for rec in sorted(run.conversion.records, key=lambda r: r.key):
        where = run.where(rec)
        resolved = rec.image_path.resolve()
        if rec.key in seen_keys or resolved in seen_paths:
            first = seen_keys.get(rec.key) or seen_paths.get(resolved)
            run.report(Problem(where, f"duplicate image id {rec.key!r} (also {first})", "skipped image"))
            continue
        seen_keys[rec.key] = where
        seen_paths[resolved] = where
        if not rec.image_path.is_file():
            run.report(Problem(where, "image file not found", "skipped image"))
            continue
        records.append(rec)
    return records


def _plan(run: _Run, records: list[ImageRecord]) -> _Plan:
    """Name every image, reuse those an earlier run prepared from the same file and options, queue the rest."""
    source = run.conversion.source
    names = [hashlib.sha256(f"{run.salt}\x00{source}\x00{r.key}".encode()).hexdigest()[:20] + ".png"
             for r in records]
    plan = _Plan(records, names, [_stat_key(r.image_path) for r in records], {}, [])
    images = run.out / "images"
    for i, (rec, name, st) in enumerate(zip(records, names, plan.stats, strict=True)):
        old = run.old_entries.get(name)
        if (old and old.get("stat") == st and old.get("options") == run.options_hash
                and old.get("laterality_in") == rec.laterality and (images / name).is_file()
                and old.get("boxes_in") == _boxes_key(rec, run.options)):
            plan.results[i] = dict(old["result"], index=i)
            continue
        boxes = tuple(tuple(box.as_list()) for box in rec.boxes) if run.options.mask_background else ()
        plan.jobs.append(_Job(i, str(rec.image_path), str(images / name), rec.laterality, rec.view, run.options,
                              boxes))
    return plan


def _run_jobs(plan: _Plan, n_workers: int, progress: bool) -> None:
    """Run every job, in this process or in worker processes; results go into ``plan.results``."""
    jobs = plan.jobs
    bar = tqdm(total=len(jobs), desc="prepare", unit="img", disable=not progress or not jobs, file=sys.stderr)
    try:
        if n_workers <= 1 or len(jobs) <= 1:
            for res in map(_prepare_one, jobs):
                plan.results[res["index"]] = res
                bar.update(1)
        else:
            _run_pool(plan, n_workers, bar)
    finally:
        bar.close()


def _run_pool(plan: _Plan, n_workers: int, bar) -> None:
    jobs = plan.jobs
    chunksize = max(1, min(16, len(jobs) // (n_workers * 4)))
    try:
        with ProcessPoolExecutor(max_workers=min(n_workers, len(jobs)), mp_context=_mp_context()) as pool:
            for res in pool.map(_prepare_one, jobs, chunksize=chunksize):
                plan.results[res["index"]] = res
                bar.update(1)
    except BrokenProcessPool:
        # A worker died (e.g. a decoder crashed on a corrupt file): retry the unfinished images one per fresh
        # process, so only the file that kills its process is lost.
        for job in (j for j in jobs if j.index not in plan.results):
            try:
                with ProcessPoolExecutor(max_workers=1, mp_context=_mp_context()) as single:
                    plan.results[job.index] = single.submit(_prepare_one, job).result()
            except BrokenProcessPool:
                plan.results[job.index] = {"index": job.index, "error": "the worker process died reading it"}
            bar.update(1)


def _assemble(run: _Run, plan: _Plan) -> _Dataset:
    """Turn the worker results into COCO entries, report per-image problems, and count for the report."""
    dataset = _Dataset()
    for i, rec in enumerate(plan.records):
        res = plan.results[i]
        where = run.where(rec)
        if "error" in res:
            run.report(Problem(where, res["error"], "skipped image"))
            continue
        name = plan.names[i]
        dataset.state_entries[name] = {"stat": plan.stats[i], "options": run.options_hash,
                                       "laterality_in": rec.laterality, "boxes_in": _boxes_key(rec, run.options),
                                       "result": {k: v for k, v in res.items() if k != "index"}}
        transform = ImageTransform.from_dict(res["transform"])
        image_id = len(dataset.images) + 1
        _report_notes(run, dataset, name, where, res)
        boxes_kept = _add_boxes(run, dataset, rec, where, image_id, transform)
        dataset.n_boxes += boxes_kept
        dataset.n_with_boxes += boxes_kept > 0
        dataset.label_counts[rec.label] += 1
        split = run.old_splits.get(f"images/{name}")
        dataset.split_counts[split or "unassigned"] += 1
        dataset.images.append(_image_entry(run, rec, res, name, image_id, where, split))
    return dataset


def _report_notes(run: _Run, dataset: _Dataset, name: str, where: str, res: dict) -> None:
    if res["crop_fallback"]:
        dataset.crop_fallbacks.append({"file_name": name, "source": where, "reason": res["crop_reason"]})
        run.report(Problem(where, f"breast crop fell back to the whole image ({res['crop_reason']})", "note"))
    if res["side_mismatch"]:
        dataset.side_mismatches.append({"file_name": name, "source": where})
        run.report(Problem(where, "laterality tag and the side the breast lies on disagree; flipped by the tag",
                           "note"))
    _mask_notes(run, where, res)


def _mask_notes(run: _Run, where: str, res: dict) -> None:
    masking = res.get("background_mask")
    if not masking:
        return
    if not masking["applied"] and not res["crop_fallback"]:  # a crop fallback already said why
        run.report(Problem(where, f"background not masked ({masking['reason']})", "note"))
    if masking["boxes_outside_mask"]:
        run.report(Problem(where, f"{masking['boxes_outside_mask']} lesion box(es) reach outside the breast "
                                  f"region; kept unmasked", "note"))


def mask_summary(images: list[dict]) -> Optional[dict]:
    """Images masked / not masked, the mean masked fraction and the boxes kept outside the region (report)."""
    records = [img["background_mask"] for img in images if img.get("background_mask")]
    if not records:
        return None
    applied = [r for r in records if r["applied"]]
    return {"images_masked": len(applied), "images_not_masked": len(records) - len(applied),
            "mean_fraction_masked": round(float(np.mean([r["fraction"] for r in applied])), 4) if applied else None,
            "images_with_film_edges": sum(bool(r["film_edges"]) for r in applied),
            "boxes_outside_mask": sum(r["boxes_outside_mask"] for r in records)}


def _add_boxes(run: _Run, dataset: _Dataset, rec: ImageRecord, where: str, image_id: int,
               transform: ImageTransform) -> int:
    """Map the record's boxes into prepared pixels and append them as annotations; returns how many were kept."""
    kept = 0
    for box in rec.boxes:
        mapped, problem, action = map_box(box.as_list(), transform)
        if problem:
            run.report(Problem(where, problem, action))
        if mapped is None:
            continue
        x1, y1, x2, y2 = mapped
        dataset.annotations.append({
            "id": len(dataset.annotations) + 1, "image_id": image_id, "category_id": 1,
            "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
            "area": round((x2 - x1) * (y2 - y1), 3), "iscrowd": 0,
            "pathology": box.pathology, "lesion_type": box.lesion_type,
        })
        kept += 1
    return kept


def _image_entry(run: _Run, rec: ImageRecord, res: dict, name: str, image_id: int, where: str,
                 split: Optional[str]) -> dict:
    return {
        "id": image_id, "file_name": f"images/{name}", "width": res["width"], "height": res["height"],
        "patient_id": opaque_id("patient", rec.patient_id, run.salt),
        "label": rec.label,
        "laterality": res["laterality"] or rec.laterality,
        "view": res["view"] or rec.view,
        "study_id": opaque_id("study", rec.study_id, run.salt) if rec.study_id else None,
        "source": where,
        "official_split": rec.official_split,
        "split": split,
        "crop_fallback": res["crop_fallback"],
        "transform": res["transform"],
        "background_mask": res.get("background_mask"),
        "extra": rec.extra,
    }


def _write_outputs(run: _Run, plan: _Plan, dataset: _Dataset, n_workers: int, elapsed: float) -> dict:
    """Write annotations.json, prepare_state.json and prepare_report.json; returns the report."""
    options, conversion = run.options, run.conversion
    annotations = {
        "info": {"description": "mammodetr prepared dataset", "source": conversion.source,
                 "prepare": options.to_dict(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        "images": dataset.images,
        "annotations": dataset.annotations,
        "categories": CATEGORIES,
    }
    write_json(run.out / ANNOTATIONS_FILE, annotations, indent=1)
    write_json(run.out / STATE_FILE, {"salt": run.salt, "images": dataset.state_entries}, indent=1)
    prepared_now = len(plan.jobs) - sum("error" in plan.results[j.index] for j in plan.jobs)
    report = {
        "source": conversion.source,
        "images_in_source": len(conversion.records),
        "images_prepared": len(dataset.images),
        "images_prepared_this_run": prepared_now,
        "images_reused_from_earlier_run": len(plan.records) - len(plan.jobs),
        "images_skipped": len(conversion.records) - len(dataset.images),
        "labels": {lab: dataset.label_counts.get(lab, 0) for lab in LABELS},
        "images_with_boxes": dataset.n_with_boxes,
        "images_without_boxes": len(dataset.images) - dataset.n_with_boxes,
        "boxes": dataset.n_boxes,
        "splits": dict(dataset.split_counts),
        "counts": count_table(dataset.images, dataset.annotations),
        "conversion": conversion.summary,
        "crop_fallbacks": dataset.crop_fallbacks,
        "side_mismatches": dataset.side_mismatches,
        "background_mask": mask_summary(dataset.images),
        "problems": [p.to_dict() for p in run.problems],
        "problem_counts": dict(Counter(p.action for p in run.problems)),
        "options": options.to_dict(),
        "workers": n_workers,
        "seconds": round(elapsed, 3),
        "images_per_second_this_run": round(prepared_now / elapsed, 3) if elapsed > 0 and prepared_now else None,
    }
    write_json(run.out / REPORT_FILE, report, indent=1)
    return report
