"""The viewer's work behind the JSON API: exams, predictions, pixels, Grad-CAM, uploads and SRs.

Everything that predicts goes through the :class:`~mammodetr.inference.predictor.Predictor` (one model call at a
time: Grad-CAM hooks the model). Responses name files by opaque id and by their path relative to ``--images``
(or a server-made name for uploads); nothing is logged but ids and reasons.
"""

from __future__ import annotations

import base64
import io
import logging
import shutil
import threading
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from mammodetr._version import __version__
from mammodetr.data.dicom import read_dicom_tags
from mammodetr.data.image import ImageReadError
from mammodetr.data.io import sniff_path
from mammodetr.explain.gradcam import gradcam
from mammodetr.explain.heatmap import cam_on_original
from mammodetr.inference.decode import malignancy_probability
from mammodetr.inference.exam import ExamOptions, exam_records, operating_point
from mammodetr.inference.inputs import load_raw_input
from mammodetr.inference.predictions import Prediction
from mammodetr.inference.predictor import Predictor

from .options import ServeOptions
from .pixels import DisplayPixels, display_pixels
from .store import ExamEntry, ExamStore, ImageEntry
from .uploads import UploadedFile

try:  # DICOM SR export (issue 13); absent until that package lands
    from mammodetr.sr import write_sr
except ImportError:  # pragma: no cover - depends on the installed version
    write_sr = None

__all__ = ["RESEARCH_USE_ONLY", "Unavailable", "Viewer"]

log = logging.getLogger(__name__)

RESEARCH_USE_ONLY = ("Research use only. Not a medical device: not for diagnosis, screening decisions or any "
                     "clinical use. The model's outputs are unverified.")
_CACHE_SIZE = 24


class Unavailable(RuntimeError):
    """A feature this server cannot offer (a missing optional package, an ONNX model for Grad-CAM)."""


class Viewer:
    """The state of one ``serve`` process.

    Args:
        predictor: the model.
        store: the exams served.
        options: server settings.
        exam_options: breast aggregation and operating point.
    """

    def __init__(self, predictor: Predictor, store: ExamStore, options: ServeOptions,
                 exam_options: ExamOptions) -> None:
        self.predictor = predictor
        self.store = store
        self.options = options
        self.exam_options = exam_options
        self.point = operating_point(exam_options, predictor.meta)
        self._model_lock = threading.Lock()
        self._pixels: OrderedDict[str, DisplayPixels] = OrderedDict()
        self._pixels_lock = threading.Lock()

    @property
    def gradcam_available(self) -> bool:
        try:
            import pytorch_grad_cam  # noqa: F401
        except ImportError:
            return False
        return isinstance(self.predictor.model, torch.nn.Module)

    def info(self) -> dict:
        cfg, meta = self.predictor.config, self.predictor.meta
        return {
            "name": "mammodetr", "version": __version__, "research_use_only": RESEARCH_USE_ONLY,
            "model": {"backbone": cfg.model.backbone, "image_size": self.predictor.geometry.image_size,
                      "weights_sha256": meta.get("weights_sha256")},
            "operating_point": {"threshold": self.point.threshold, "source": self.point.source},
            "breast_aggregate": self.exam_options.breast_aggregate,
            "limits": {"max_upload_mb": self.options.max_upload_mb, "max_upload_files": self.options.max_upload_files,
                       "max_upload_pixels": self.options.max_upload_pixels},
            "gradcam": self.gradcam_available, "sr": write_sr is not None,
        }

    def exams(self) -> dict:
        return {"exams": [e.summary() for e in self.store.exams()]}

    def predict(self, exam_id: str) -> dict:
        """Predict an exam (once; later calls return the same result)."""
        entry = self.store.exam(exam_id)
        with entry.lock:
            if entry.result is None:
                with self._model_lock:
                    entry.result = self.predictor.predict_exam(entry.exam, options=self.exam_options)
                log.info("exam %s predicted", entry.exam_id)
        return {"exam": entry.summary(), "operating_point": {"threshold": self.point.threshold,
                                                             "source": self.point.source},
                "records": self._records(entry)}

    def _records(self, entry: ExamEntry) -> list[dict]:
        names = {im.path: self.store.image(entry.image_ids[im.path]).name for im in entry.exam.images}
        records = exam_records(entry.result, name=lambda p: names[p])
        for rec, (im, _) in zip(records, entry.result.results):
            rec["image_id"] = entry.image_ids[im.path]
            if "error" in rec:  # the reader names the file by its path on the server
                rec["error"] = rec["error"].replace(str(im.path), names[im.path])
        for rec in records:
            rec["exam_id"] = entry.exam_id
            rec["exam_label"] = entry.label
        return records

    def display(self, image_id: str) -> tuple[ImageEntry, DisplayPixels]:
        """The image's display pixels (cached for the last few images)."""
        entry = self.store.image(image_id)
        with self._pixels_lock:
            if image_id in self._pixels:
                self._pixels.move_to_end(image_id)
                return entry, self._pixels[image_id]
        pix = display_pixels(entry.path, self.predictor.prepare_options, laterality=entry.laterality,
                             max_side=self.options.display_side)
        with self._pixels_lock:
            self._pixels[image_id] = pix
            while len(self._pixels) > _CACHE_SIZE:
                self._pixels.popitem(last=False)
        return entry, pix

    def image_info(self, image_id: str) -> dict:
        entry, pix = self.display(image_id)
        return {"id": entry.image_id, "exam_id": entry.exam_id, "view": entry.label, "laterality": entry.laterality,
                "name": entry.name, **pix.info()}

    def pixels(self, image_id: str) -> bytes:
        """The display pixels as little-endian uint16, row by row."""
        return self.display(image_id)[1].pixels_u16.astype("<u2").tobytes()

    def gradcam(self, image_id: str) -> dict:
        """Grad-CAM of the malignancy logit on the display grid of the original image, as uint8 (base64)."""
        if not self.gradcam_available:
            raise Unavailable("Grad-CAM needs a PyTorch checkpoint and the grad-cam package (mammodetr[gradcam])")
        entry, pix = self.display(image_id)
        raw = load_raw_input(entry.path, self.predictor.prepare_options, self.predictor.geometry)
        with self._model_lock:
            res = gradcam(self.predictor.model, raw.image[None].to(self.predictor.device))
        cam = cam_on_original(res.cams[0], raw.transform, pix.pixels_u16.shape)
        data = np.clip(np.rint(cam * 255), 0, 255).astype(np.uint8)
        return {"id": image_id, "width": int(data.shape[1]), "height": int(data.shape[0]),
                "data": base64.b64encode(data.tobytes()).decode("ascii"), "target_layer": res.target_layer,
                "p_malignant": float(malignancy_probability(torch.as_tensor(res.logits))[0])}

    def check_upload(self, f: UploadedFile) -> str | None:
        """Why an uploaded file is refused (None: accepted); read from the header only, before any decoding."""
        if sniff_path(f.path) != "dicom":
            return f"{f.client_name}: not a DICOM file (the viewer takes DICOM uploads; serve other formats " \
                   f"with --images)"
        try:
            tags = read_dicom_tags(f.path)
        except ImageReadError as e:
            return f"{f.client_name}: {e.reason}"
        pixels = tags.rows * tags.columns * max(tags.frames, 1)
        if tags.rows < 1 or tags.columns < 1:
            return f"{f.client_name}: the header has no valid Rows and Columns"
        if pixels > self.options.max_upload_pixels:
            return (f"{f.client_name}: image too large ({tags.rows} x {tags.columns} x {tags.frames} frames > "
                    f"{self.options.max_upload_pixels} pixels)")
        return None

    def add_upload(self, files: list[UploadedFile]) -> dict:
        """Register the accepted files of an upload as exams; refused files are deleted and listed."""
        errors, kept = [], []
        for f in files:
            reason = self.check_upload(f)
            if reason is None:
                kept.append(f.path)
            else:
                f.path.unlink(missing_ok=True)
                errors.append({"file": f.client_name, "error": reason})
        exams = self.store.add_upload(kept) if kept else []
        log.info("upload: %d files accepted, %d refused", len(kept), len(errors))
        return {"exams": [e.summary() for e in exams], "errors": errors}

    def sr_zip(self, exam_id: str) -> bytes:
        """A zip of one DICOM SR per predicted DICOM image of the exam."""
        if write_sr is None:
            raise Unavailable("DICOM SR export is not in this installation (mammodetr.sr)")
        entry = self.store.exam(exam_id)
        if entry.result is None:
            self.predict(exam_id)
        folder = Path(self.store.upload_dir) / f"sr-{exam_id}"
        folder.mkdir(exist_ok=True)
        buffer = io.BytesIO()
        try:
            with zipfile.ZipFile(buffer, "w") as zf:
                for im, pred in entry.result.results:
                    if isinstance(pred, Prediction) and sniff_path(im.path) == "dicom":
                        path = write_sr(im.path, pred, self.predictor, folder)
                        zf.write(path, f"{im.label}-{path.name}")
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return buffer.getvalue()
