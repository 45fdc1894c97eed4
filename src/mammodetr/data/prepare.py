"""Build a prepared dataset folder from converter records: 16-bit PNGs, COCO annotations, a report.

Output folder::

    images/<name>.png         16-bit grayscale, breast-cropped, background-masked, optionally side-flipped, long
                              side capped; the name is a keyed hash of the converter and the source's own image key
    annotations.json          COCO + per-image extras (patient_id, label, laterality, view, study_id, source,
                              source_digest, transform, background_mask, official_split, split); annotation bbox
                              [x, y, w, h] in
                              PREPARED pixels
    prepare_report.json       counts and every problem (file, problem, action)
    prepare_state.json        the id key's fingerprint and, per image, the source's size/mtime and what was
                              computed, so a re-run skips images already prepared

Identifiers never enter the folder: patient and study ids are HMAC pseudonyms under the site's id key
(:mod:`~mammodetr.data.id_key`, kept outside the dataset), source paths are keyed hashes whose mapping back goes to a
private source map (:mod:`~mammodetr.data.source_map`), and the folder records only the key's fingerprint. A run with
another key, or on a folder of an older mammodetr that kept a salt inside it, is refused unless ``rekey`` is asked
(every image is then prepared again under its new name and the old names are removed). See docs/security.md.

Images are prepared in parallel worker processes (:mod:`~mammodetr.data.prepare_jobs`); boxes are mapped in the
main process with each image's recorded transform. Each problem is printed as one line naming the file and what is
wrong; the rest of the dataset is still prepared. When an output cannot be written (disk full, read-only folder),
the run stops: the images finished so far are written to annotations.json and the state (which is also saved every
:data:`STATE_SAVE_SECONDS` while running), no temporary file is left, and a re-run resumes from them
(:class:`PrepareStopped`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from tqdm import tqdm

from mammodetr.atomic import write_json
from mammodetr.data.counts import count_table
from mammodetr.data.geometry import ImageTransform
from mammodetr.data.id_key import IdKey, load_id_key
from mammodetr.data.image import file_problem
from mammodetr.data.prepare_jobs import Job, run_jobs
from mammodetr.data.preprocess import PrepareOptions
from mammodetr.data.records import DUPLICATE_ROW, LABELS, Conversion, ImageRecord, Problem
from mammodetr.data.source_map import SourceMap, default_source_map_path, inside

__all__ = ["prepare_dataset", "default_options", "map_box", "PrepareStopped", "STATE_FILE", "ANNOTATIONS_FILE",
           "REPORT_FILE", "STATE_SAVE_SECONDS"]

STATE_FILE = "prepare_state.json"
ANNOTATIONS_FILE = "annotations.json"
REPORT_FILE = "prepare_report.json"
CATEGORIES = [{"id": 1, "name": "lesion", "supercategory": "lesion"}]
# Seconds between saves of prepare_state.json while images are prepared (a killed run resumes from the last one).
STATE_SAVE_SECONDS = 30.0
_OUR_NAME = re.compile(r"[0-9a-f]{20}\.png")
# Differences below this many prepared pixels are rounding of the resize, not a box leaving the crop.
_CLIP_TOLERANCE_PX = 0.5


class PrepareStopped(OSError):
    """``prepare`` stopped because an output could not be written; what was finished is saved (see the message)."""


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
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _resolved(path: Path) -> Path:
    """``path`` with its links resolved; a link loop is left as it is (prepare then names it)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return Path(os.path.abspath(path))


def _source_name(record: ImageRecord, root: Optional[Path]) -> str:
    """The image's path relative to the input root (links inside the tree are not followed: the name is the user's)."""
    if root is not None:
        for path, base in ((Path(os.path.abspath(record.image_path)), Path(os.path.abspath(root))),
                           (_resolved(record.image_path), _resolved(Path(root)))):
            try:
                return str(path.relative_to(base))
            except ValueError:
                continue
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
        key: The id key pseudonyms, image names and source hashes are made with.
        sources: Source path -> keyed hash, written to the private source map.
        old_entries: The earlier run's state, per file name (source stat, options hash, worker result).
        old_splits: The earlier run's split per ``("file", file_name)``, ``("digest", source_digest)`` and (for a
            dataset of an older mammodetr) ``("path", source)``: ``mammodetr split`` writes them.
        options_hash: Hash of ``options``; an image prepared with other options is prepared again.
        rekeyed: The folder was made with another key (or an older mammodetr) and is prepared again under this one.
        stale: File names of the earlier run to remove once the new outputs are written (re-keying only).
        problems: Every problem reported, in order.
        stopped: Why the run stopped before the end (an output could not be written), or None.
    """

    conversion: Conversion
    out: Path
    options: PrepareOptions
    emit: Callable[[str], None]
    key: IdKey
    sources: SourceMap
    old_entries: dict
    old_splits: dict
    options_hash: str
    rekeyed: bool = False
    stale: set[str] = field(default_factory=set)
    problems: list[Problem] = field(default_factory=list)
    stopped: Optional[str] = None

    def report(self, problem: Problem) -> None:
        self.problems.append(problem)
        self.emit(problem.line())

    def where(self, record: ImageRecord) -> str:
        return _source_name(record, self.conversion.input_root)

    def problem(self, record: ImageRecord, what: str, action: str) -> None:
        """Report a problem of one record's image (named by its source path, hashed in the report)."""
        where = self.where(record)
        self.report(Problem(where, what, action, paths=(where,)))


@dataclass
class _Plan:
    """The images to prepare and how.

    Attributes:
        records: Unique records whose image file exists, in key order; index ``i`` names an image everywhere.
        names: Output file name per record (a keyed hash of the converter and the record's key).
        stats: Source ``[size, mtime_ns]`` per record (None when it cannot be read).
        results: Worker result per record index: filled from the earlier run for reused images, then by the jobs.
        jobs: One per image that needs preparing in this run.
    """

    records: list[ImageRecord]
    names: list[str]
    stats: list[Optional[list[int]]]
    results: dict[int, dict]
    jobs: list[Job]


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
        n_not_prepared: Images not prepared because the run stopped before them.
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
    n_not_prepared: int = 0
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
    id_key: IdKey | None = None,
    source_map: str | Path | None = None,
    rekey: bool = False,
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
        id_key: the key of the pseudonyms (default: :func:`~mammodetr.data.id_key.load_id_key`).
        source_map: the private hash -> source path file (default: beside the key, see
            :func:`~mammodetr.data.source_map.default_source_map_path`); never inside ``out_dir``.
        rekey: prepare a folder made with another key (or by an older mammodetr that stored its salt) again under
            this key; without it such a folder is refused.

    Returns:
        The report dict also written to ``prepare_report.json``.

    Raises:
        ValueError: another key than the folder's, a key or source map inside the folder.
        PrepareStopped: an output could not be written; the images finished are saved and a re-run resumes.
    """
    t0 = time.perf_counter()
    key = id_key or load_id_key()
    out = Path(out_dir)
    run = _start(conversion, out, options or default_options(out), log or _log_to_stderr, key,
                 _source_map(key, out, source_map), rekey)
    plan = _plan(run, _unique_records(run))
    n_workers = (os.cpu_count() or 1) if workers is None else max(0, int(workers))
    run.stopped = run_jobs(plan.jobs, plan.results, n_workers, progress, _state_saver(run, plan))
    dataset = _assemble(run, plan)
    report = _write_outputs(run, plan, dataset, n_workers, time.perf_counter() - t0)
    if run.stopped:
        raise PrepareStopped(f"{out}: stopped, {run.stopped}; the {len(dataset.images)} images prepared so far are "
                             f"saved in {ANNOTATIONS_FILE}, {dataset.n_not_prepared} are not prepared yet: free space "
                             "(or make the folder writable) and run the same command again to prepare the rest")
    return report


def _source_map(key: IdKey, out: Path, path: str | Path | None) -> SourceMap:
    """The run's source map; a key file or map inside the dataset folder would travel with it, so both are refused."""
    if key.path is not None and inside(key.path, out):
        raise ValueError(f"{key.path}: the id key must not be inside the dataset folder {out} (whoever gets the "
                         "folder could re-identify its patients); keep it outside, see docs/security.md")
    map_path = Path(path).expanduser() if path is not None else default_source_map_path(key, out)
    if inside(map_path, out):
        raise ValueError(f"{map_path}: the source map must not be inside the dataset folder {out} (it maps the "
                         "hashes back to file names that may name patients)")
    return SourceMap(key, map_path)


def _check_key(out: Path, state: dict, annotations: dict, key: IdKey, rekey: bool) -> bool:
    """Whether the folder must be re-keyed (True) or can be continued (False); refuses a mismatch without ``rekey``."""
    info = annotations.get("info") if isinstance(annotations.get("info"), dict) else {}
    recorded = state.get("id_key_fingerprint") or info.get("id_key_fingerprint")
    legacy = "salt" in state or (recorded is None and bool(state.get("images") or annotations.get("images")))
    if legacy:
        if rekey:
            return True
        raise ValueError(f"{out}: prepared by an older mammodetr that kept its id salt in {STATE_FILE}, so anyone "
                         "with the folder can recover its patient ids; pass --rekey to prepare it again under the id "
                         "key (images are renamed, the salt and the source paths are removed), or prepare into a new "
                         "folder")
    if recorded is None or recorded == key.fingerprint:
        return False
    if rekey:
        return True
    raise ValueError(f"{out}: prepared with another id key (fingerprint {recorded}); this run's key ({key.origin}) "
                     f"has fingerprint {key.fingerprint}. Pass the key it was prepared with (--id-key FILE or "
                     "MAMMODETR_ID_KEY), or --rekey to prepare every image again under this key")


def _start(conversion: Conversion, out: Path, options: PrepareOptions, emit: Callable[[str], None], key: IdKey,
           sources: SourceMap, rekey: bool) -> _Run:
    """Check the id key against the folder, create it, report the converter's problems, load what a run left."""
    state = _load_json(out / STATE_FILE) or {}
    old_annotations = _load_json(out / ANNOTATIONS_FILE) or {}
    fresh = _check_key(out, state, old_annotations, key, rekey)
    (out / "images").mkdir(parents=True, exist_ok=True)
    _remove_temp_files(out)
    old_images = [img for img in old_annotations.get("images", []) if isinstance(img, dict)]
    run = _Run(
        conversion=conversion, out=out, options=options, emit=emit, key=key, sources=sources,
        old_entries={} if fresh else state.get("images", {}),
        old_splits=_old_splits(old_images),
        options_hash=_options_hash(options),
        rekeyed=fresh,
        stale=({*state.get("images", {})} | {Path(str(i.get("file_name"))).name for i in old_images}) if fresh
        else set(),
    )
    for problem in conversion.problems:
        run.report(problem)
    _note_masking_change(run, old_annotations)
    return run


def _old_splits(images: list[dict]) -> dict:
    splits = {}
    for img in images:
        if img.get("split") is None:
            continue
        splits[("file", img.get("file_name"))] = img["split"]
        if img.get("source_digest"):
            splits[("digest", img["source_digest"])] = img["split"]
        if img.get("source"):
            splits[("path", img["source"])] = img["split"]
    return splits


def _remove_temp_files(out: Path) -> None:
    """Temporary files a killed run left behind (atomic writes name them ``.<name>.<pid>.tmp``)."""
    for tmp in [*out.glob(".*.json.*.tmp"), *(out / "images").glob(".*.png.*.tmp")]:
        tmp.unlink(missing_ok=True)
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
        resolved = _resolved(rec.image_path)
        if rec.key in seen_keys or resolved in seen_paths:
            first = seen_keys.get(rec.key) or seen_paths.get(resolved)
            run.report(Problem(where, f"duplicate image id or file (also {first})", "skipped image",
                               paths=(where, first)))
            continue
        seen_keys[rec.key] = where
        seen_paths[resolved] = where
        problem = file_problem(rec.image_path, missing="image file not found")
        if problem is not None:  # a FIFO or a device is named as such and never opened
            run.problem(rec, problem, "skipped image")
            continue
        records.append(rec)
    return records


def _plan(run: _Run, records: list[ImageRecord]) -> _Plan:
    """Name every image, reuse those an earlier run prepared from the same file and options, queue the rest."""
    source = run.conversion.source
    names = [run.key.digest("image", f"{source}\x00{r.key}")[:20] + ".png" for r in records]
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
        plan.jobs.append(Job(i, str(rec.image_path), str(images / name), rec.laterality, rec.view, run.options,
                             boxes))
    return plan


def _state_entries(run: _Run, plan: _Plan) -> dict:
    """prepare_state.json's ``images``: every image with a result, by file name."""
    entries = {}
    for i, res in plan.results.items():
        if "error" in res or "stop" in res:
            continue
        entries[plan.names[i]] = {"stat": plan.stats[i], "options": run.options_hash,
                                  "laterality_in": plan.records[i].laterality,
                                  "boxes_in": _boxes_key(plan.records[i], run.options),
                                  "result": {k: v for k, v in res.items() if k != "index"}}
    return entries


def _write_state(run: _Run, entries: dict) -> None:
    write_json(run.out / STATE_FILE, {"id_key_fingerprint": run.key.fingerprint, "images": entries}, indent=1)


def _state_saver(run: _Run, plan: _Plan) -> Callable[[], Optional[str]]:
    """A tick for :func:`run_jobs` that saves the state every STATE_SAVE_SECONDS; a failed save stops the run."""
    last = [time.monotonic()]

    def tick() -> Optional[str]:
        if time.monotonic() - last[0] < STATE_SAVE_SECONDS:
            return None
        last[0] = time.monotonic()
        try:
            _write_state(run, {**run.old_entries, **_state_entries(run, plan)})
        except OSError as exc:
            return f"cannot write {run.out / STATE_FILE} ({exc.strerror or type(exc).__name__})"
        return None

    return tick


def _assemble(run: _Run, plan: _Plan) -> _Dataset:
    """Turn the worker results into COCO entries, report per-image problems, and count for the report."""
    dataset = _Dataset(state_entries=_state_entries(run, plan))
    for i, rec in enumerate(plan.records):
        res = plan.results.get(i)
        if res is None or "stop" in res:  # not reached, or its output could not be written: not the input's fault
            dataset.n_not_prepared += 1
            continue
        if "error" in res:
            run.problem(rec, res["error"], "skipped image")
            continue
        where = run.where(rec)
        name = plan.names[i]
        transform = ImageTransform.from_dict(res["transform"])
        image_id = len(dataset.images) + 1
        _report_notes(run, dataset, rec, name, res)
        boxes_kept = _add_boxes(run, dataset, rec, image_id, transform)
        dataset.n_boxes += boxes_kept
        dataset.n_with_boxes += boxes_kept > 0
        dataset.label_counts[rec.label] += 1
        split = next((run.old_splits[k] for k in (("file", f"images/{name}"), ("digest", res.get("source_digest")),
                                                  ("path", where)) if k in run.old_splits), None)
        dataset.split_counts[split or "unassigned"] += 1
        dataset.images.append(_image_entry(run, rec, res, name, image_id, split))
    return dataset


def _report_notes(run: _Run, dataset: _Dataset, rec: ImageRecord, name: str, res: dict) -> None:
    hidden = run.sources.hide(run.where(rec))
    if res["crop_fallback"]:
        dataset.crop_fallbacks.append({"file_name": name, "source": hidden, "reason": res["crop_reason"]})
        run.problem(rec, f"breast crop fell back to the whole image ({res['crop_reason']})", "note")
    if res["side_mismatch"]:
        dataset.side_mismatches.append({"file_name": name, "source": hidden})
        run.problem(rec, "laterality tag and the side the breast lies on disagree; flipped by the tag", "note")
    _mask_notes(run, rec, res)


def _mask_notes(run: _Run, rec: ImageRecord, res: dict) -> None:
    masking = res.get("background_mask")
    if not masking:
        return
    if not masking["applied"] and not res["crop_fallback"]:  # a crop fallback already said why
        run.problem(rec, f"background not masked ({masking['reason']})", "note")
    if masking["boxes_outside_mask"]:
        run.problem(rec, f"{masking['boxes_outside_mask']} lesion box(es) reach outside the breast region; kept "
                         f"unmasked", "note")


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


def _add_boxes(run: _Run, dataset: _Dataset, rec: ImageRecord, image_id: int, transform: ImageTransform) -> int:
    """Map the record's boxes into prepared pixels and append them as annotations; returns how many were kept."""
    kept = 0
    for box in rec.boxes:
        mapped, problem, action = map_box(box.as_list(), transform)
        if problem:
            run.problem(rec, problem, action)
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


def _image_entry(run: _Run, rec: ImageRecord, res: dict, name: str, image_id: int, split: Optional[str]) -> dict:
    return {
        "id": image_id, "file_name": f"images/{name}", "width": res["width"], "height": res["height"],
        "patient_id": run.key.pseudonym("patient", rec.patient_id),
        "label": rec.label,
        "laterality": res["laterality"] or rec.laterality,
        "view": res["view"] or rec.view,
        "study_id": run.key.pseudonym("study", rec.study_id) if rec.study_id else None,
        "source": run.sources.hide(run.where(rec)),
        "source_digest": res.get("source_digest"),
        "official_split": rec.official_split,
        "split": split,
        "crop_fallback": res["crop_fallback"],
        "transform": res["transform"],
        "background_mask": res.get("background_mask"),
        "extra": rec.extra,
    }


def _write_outputs(run: _Run, plan: _Plan, dataset: _Dataset, n_workers: int, elapsed: float) -> dict:
    """Write the source map, prepare_state.json, annotations.json and prepare_report.json; returns the report.

    The state goes first: when the disk fills up after it, a re-run reuses every image it lists.
    """
    conversion = run.conversion
    annotations = {
        "info": {"description": "mammodetr prepared dataset", "source": conversion.source,
                 "prepare": run.options.to_dict(), "id_key_fingerprint": run.key.fingerprint,
                 "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        "images": dataset.images,
        "annotations": dataset.annotations,
        "categories": CATEGORIES,
    }
    report = _report(run, plan, dataset, n_workers, elapsed)  # hides the problems' paths: before the map is written
    run.sources.write(run.out, conversion.input_root)
    saved = _saving(run, len(dataset.images))
    saved(STATE_FILE, lambda: _write_state(run, dataset.state_entries))
    saved(ANNOTATIONS_FILE, lambda: write_json(run.out / ANNOTATIONS_FILE, annotations, indent=1))
    saved(REPORT_FILE, lambda: write_json(run.out / REPORT_FILE, report, indent=1))
    _remove_stale(run, plan)
    return report


def _saving(run: _Run, n_images: int) -> Callable[[str, Callable[[], object]], None]:
    """Runs one output write; a failed one is a :class:`PrepareStopped` saying what a re-run will find."""
    written: list[str] = []

    def save(name: str, write: Callable[[], object]) -> None:
        try:
            write()
        except OSError as exc:
            kept = (f"the {n_images} prepared images are recorded in {STATE_FILE}, so a re-run reuses them"
                    if STATE_FILE in written else "the images of this run will be prepared again by a re-run")
            raise PrepareStopped(f"{run.out / name}: cannot write it ({exc.strerror or type(exc).__name__}); {kept}: "
                                 "free space (or make the folder writable) and run the same command again") from exc
        written.append(name)

    return save


def _remove_stale(run: _Run, plan: _Plan) -> None:
    """After re-keying, the images under their old names (listed by the old state and annotations) are removed."""
    for name in run.stale - set(plan.names):
        if _OUR_NAME.fullmatch(name):  # only names prepare makes: the old files are read from a folder's JSON
            (run.out / "images" / name).unlink(missing_ok=True)


def _report(run: _Run, plan: _Plan, dataset: _Dataset, n_workers: int, elapsed: float) -> dict:
    conversion = run.conversion
    done = [plan.results.get(j.index) for j in plan.jobs]
    prepared_now = sum(r is not None and "error" not in r and "stop" not in r for r in done)
    return {
        "source": conversion.source,
        "images_in_source": len(conversion.records),
        "images_prepared": len(dataset.images),
        "images_prepared_this_run": prepared_now,
        "images_reused_from_earlier_run": len(plan.records) - len(plan.jobs),
        "images_skipped": len(conversion.records) - len(dataset.images) - dataset.n_not_prepared,
        "images_not_prepared": dataset.n_not_prepared,
        "stopped": run.stopped,
        "labels": {lab: dataset.label_counts.get(lab, 0) for lab in LABELS},
        "images_with_boxes": dataset.n_with_boxes,
        "images_without_boxes": len(dataset.images) - dataset.n_with_boxes,
        "boxes": dataset.n_boxes,
        "duplicate_rows_dropped": sum(p.action == DUPLICATE_ROW for p in run.problems),
        "splits": dict(dataset.split_counts),
        "counts": count_table(dataset.images, dataset.annotations),
        "conversion": conversion.summary,
        "crop_fallbacks": dataset.crop_fallbacks,
        "side_mismatches": dataset.side_mismatches,
        "background_mask": mask_summary(dataset.images),
        "problems": [p.to_dict(run.sources.hide) for p in run.problems],
        "problem_counts": dict(Counter(p.action for p in run.problems)),
        "id_key_fingerprint": run.key.fingerprint,
        "source_map": str(run.sources.path),
        "rekeyed": run.rekeyed,
        "options": run.options.to_dict(),
        "workers": n_workers,
        "seconds": round(elapsed, 3),
        "images_per_second_this_run": round(prepared_now / elapsed, 3) if elapsed > 0 and prepared_now else None,
    }
