"""The per-image work of ``prepare``: read, prepare and write one 16-bit PNG, in worker processes.

A bad input file costs only itself: its job comes back as ``{"error": ...}`` and the others go on, and a worker
process killed by a crashing decoder is replaced. An output that cannot be written (disk full, read-only or
removed folder) is different: every later image would fail the same way, so the run stops at the first one,
keeps every image finished so far, and says why (:func:`run_jobs` returns the reason). The atomic PNG write
leaves no temporary file behind.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import sys
from concurrent.futures import CancelledError, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Callable, Optional

from tqdm import tqdm

from mammodetr.data.image import ImageReadError, to_uint16
from mammodetr.data.png16 import write_png16
from mammodetr.data.preprocess import PrepareOptions, preprocess_image

__all__ = ["Job", "prepare_one", "run_jobs", "source_digest"]

_DIGEST_SPAN = 1 << 20


@dataclass(frozen=True)
class Job:
    """One image to prepare: its record index, source file, output PNG, table laterality/view, the options and the
    lesion boxes masking must keep."""

    index: int
    source: str
    out_png: str
    laterality: Optional[str]
    view: Optional[str]
    options: PrepareOptions
    boxes: tuple = ()  # the lesion boxes (original pixels): background masking never touches them


def source_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 (32 hex) of a file's size, first and last MiB: the same file gives the same digest under any id key.

    It orders patients for the split (:func:`~mammodetr.data.split.assign_splits`) without the keyed pseudonyms.
    Guessing the file's content from it is impossible (it covers pixel data), so it identifies no one.
    """
    size = os.path.getsize(path)
    h = hashlib.sha256(str(size).encode() + b"\x00")
    with open(path, "rb") as fh:
        h.update(fh.read(_DIGEST_SPAN))
        if size > 2 * _DIGEST_SPAN:
            fh.seek(size - _DIGEST_SPAN)
            h.update(fh.read(_DIGEST_SPAN))
    return h.hexdigest()[:32]


def prepare_one(job: Job) -> dict:
    """Worker: prepare one image and write its PNG. Never raises.

    Returns:
        The result for ``prepare``'s state (transform, size, laterality, view, crop and side notes, source digest),
        or ``{"error": reason}`` for a bad input, or ``{"stop": reason}`` when the PNG could not be written.
    """
    try:
        prepared = preprocess_image(job.source, job.options, laterality=job.laterality, view=job.view,
                                    keep_boxes_xyxy=job.boxes)
        digest = source_digest(job.source)
    except ImageReadError as exc:
        return {"index": job.index, "error": exc.reason}
    except Exception as exc:  # noqa: BLE001 - one bad file must not stop the dataset
        return {"index": job.index, "error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"}
    try:
        write_png16(job.out_png, to_uint16(prepared.pixels))
    except OSError as exc:
        return {"index": job.index, "stop": f"cannot write {job.out_png} ({exc.strerror or type(exc).__name__})"}
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
        "source_digest": digest,
    }


def _prepare_chunk(jobs: list[Job]) -> list[dict]:
    """Worker: several jobs in a row (fewer round trips), stopping at the first that could not be written."""
    out = []
    for job in jobs:
        out.append(prepare_one(job))
        if "stop" in out[-1]:
            break
    return out


def _mp_context():
    # fork starts a worker in milliseconds where spawn re-imports the package (with torch: seconds per worker).
    # Workers only use numpy/Pillow/pydicom, never torch's thread pools, so forking is safe here.
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def run_jobs(jobs: list[Job], results: dict[int, dict], n_workers: int, progress: bool,
             tick: Callable[[], Optional[str]] = lambda: None) -> Optional[str]:
    """Run every job, in this process (``n_workers <= 1``) or in worker processes; results go into ``results``.

    Args:
        jobs: The images to prepare.
        results: Filled with each job's result, by record index.
        n_workers: Worker processes.
        progress: Show a tqdm bar.
        tick: Called after each result; a returned reason stops the run (``prepare`` saves its state there).

    Returns:
        Why the run stopped before the end (an output that could not be written), or None.
    """
    bar = tqdm(total=len(jobs), desc="prepare", unit="img", disable=not progress or not jobs, file=sys.stderr)
    try:
        if n_workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                res = results[job.index] = prepare_one(job)
                bar.update(1)
                stop = res.get("stop") or tick()
                if stop:
                    return stop
            return None
        return _run_pool(jobs, results, n_workers, bar, tick)
    finally:
        bar.close()


def _run_pool(jobs: list[Job], results: dict[int, dict], n_workers: int, bar, tick) -> Optional[str]:
    size = max(1, min(16, len(jobs) // (n_workers * 4)))
    stop = None
    try:
        with ProcessPoolExecutor(max_workers=min(n_workers, len(jobs)), mp_context=_mp_context()) as pool:
            futures = [pool.submit(_prepare_chunk, jobs[i:i + size]) for i in range(0, len(jobs), size)]
            for fut in as_completed(futures):
                try:
                    chunk = fut.result()
                except CancelledError:
                    continue
                for res in chunk:
                    results[res["index"]] = res
                    bar.update(1)
                    stop = stop or res.get("stop") or tick()
                if stop:  # chunks already running finish (and are kept); the others never start
                    for other in futures:
                        other.cancel()
    except BrokenProcessPool:
        if stop is None:
            stop = _retry_one_by_one(jobs, results, bar, tick)
    return stop


def _retry_one_by_one(jobs: list[Job], results: dict[int, dict], bar, tick) -> Optional[str]:
    # A worker died (e.g. a decoder crashed on a corrupt file): retry the unfinished images one per fresh
    # process, so only the file that kills its process is lost.
    for job in [j for j in jobs if j.index not in results]:
        try:
            with ProcessPoolExecutor(max_workers=1, mp_context=_mp_context()) as single:
                results[job.index] = single.submit(prepare_one, job).result()
        except BrokenProcessPool:
            results[job.index] = {"index": job.index, "error": "the worker process died reading it"}
        bar.update(1)
        stop = results[job.index].get("stop") or tick()
        if stop:
            return stop
    return None
