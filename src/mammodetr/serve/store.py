"""The exams the viewer serves, each file addressed by an opaque id.

A client never names a file: the exams of ``--images`` are listed once at start (header reads only) and each
exam and image gets a random id; uploads are saved under server-made names in a private folder (mode 0700)
that is deleted when the server stops. Every path is checked to lie inside its folder (symbolic links resolved)
when it is registered and again each time it is read.
"""

from __future__ import annotations

import logging
import re
import secrets
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from mammodetr.inference.exam import Exam, ExamResult, group_exams
from mammodetr.inference.inputs import collect_inputs

__all__ = ["ID_PATTERN", "ImageEntry", "ExamEntry", "ExamStore"]

log = logging.getLogger(__name__)

ID_PATTERN = re.compile(r"^[0-9a-f]{16}$")


@dataclass
class ImageEntry:
    """One served file: its opaque id, where it is, the folder it must stay in, its exam and its view."""

    image_id: str
    path: Path
    root: Path
    exam_id: str
    name: str
    laterality: str | None
    view: str | None
    label: str


@dataclass
class ExamEntry:
    """One served exam: opaque id, the label shown, the exam, its images' ids, and the prediction once made."""

    exam_id: str
    label: str
    source: str
    exam: Exam
    image_ids: dict[Path, str]
    result: ExamResult | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def summary(self) -> dict:
        views = {slot: self.image_ids[im.path] for slot, im in self.exam.views.items()}
        return {"id": self.exam_id, "label": self.label, "source": self.source, "n_images": len(self.exam.images),
                "views": views, "missing_views": self.exam.missing_views,
                "other_images": [{"id": self.image_ids[im.path], "view": im.label} for im in self.exam.extra_images],
                "predicted": self.result is not None}


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve(strict=True).relative_to(root)
        return True
    except (OSError, ValueError):
        return False


class ExamStore:
    """Exams and images by opaque id (thread-safe registration).

    Args:
        images: the ``--images`` folder, or None.
    """

    def __init__(self, images: str | Path | None = None) -> None:
        self._exams: dict[str, ExamEntry] = {}
        self._images: dict[str, ImageEntry] = {}
        self._lock = threading.Lock()
        self._uploads = 0
        self.upload_dir = Path(tempfile.mkdtemp(prefix="mammodetr-serve-"))  # mkdtemp: mode 0700
        self.images_root = Path(images).resolve() if images is not None else None
        if self.images_root is not None:
            if not self.images_root.is_dir():
                raise ValueError(f"{images}: --images must be a folder")
            self._scan()

    def _scan(self) -> None:
        root = self.images_root
        files = collect_inputs([root])
        kept = [f for f in files if _inside(f, root)]
        if len(kept) < len(files):
            log.warning("%d files under --images lead outside it (symbolic links) and are not served",
                        len(files) - len(kept))
        for exam in group_exams(kept, relative_to=root):
            self._register(exam, exam.exam_id, "folder", root,
                           {im.path: im.path.relative_to(root).as_posix() for im in exam.images})

    def _register(self, exam: Exam, label: str, source: str, root: Path, names: dict[Path, str]) -> ExamEntry:
        with self._lock:
            eid = self._new_id()
            ids = {}
            for im in exam.images:
                iid = self._new_id()
                ids[im.path] = iid
                self._images[iid] = ImageEntry(iid, im.path, root, eid, names[im.path], im.laterality, im.view,
                                               im.label)
            entry = ExamEntry(eid, label, source, exam, ids)
            self._exams[eid] = entry
            return entry

    def _new_id(self) -> str:
        while True:
            token = secrets.token_hex(8)
            if token not in self._exams and token not in self._images:
                return token

    def add_upload(self, paths: list[Path]) -> list[ExamEntry]:
        """Register saved uploads as exams (grouped by Study Instance UID), labelled ``upload N``."""
        exams = group_exams(paths)
        with self._lock:
            self._uploads += 1
            n = self._uploads
        root = self.upload_dir.resolve()
        out = []
        for k, exam in enumerate(exams, 1):
            label = f"upload {n}" + (f" #{k}" if len(exams) > 1 else "")
            names = {im.path: f"upload-{n}-{i}.dcm" for i, im in enumerate(exam.images, 1)}
            out.append(self._register(exam, label, "upload", root, names))
        return out

    def exams(self) -> list[ExamEntry]:
        return list(self._exams.values())

    def exam(self, exam_id: str) -> ExamEntry:
        """Raises KeyError for an id that is malformed or unknown."""
        if not ID_PATTERN.match(exam_id or "") or exam_id not in self._exams:
            raise KeyError(exam_id)
        return self._exams[exam_id]

    def image(self, image_id: str) -> ImageEntry:
        """Raises KeyError for an id that is malformed, unknown, or whose file is no longer inside its folder."""
        if not ID_PATTERN.match(image_id or "") or image_id not in self._images:
            raise KeyError(image_id)
        entry = self._images[image_id]
        if not _inside(entry.path, entry.root):
            raise KeyError(image_id)
        return entry

    def close(self) -> None:
        """Delete the upload folder and everything in it."""
        shutil.rmtree(self.upload_dir, ignore_errors=True)
