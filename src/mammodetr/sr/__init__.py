"""DICOM Structured Reports of predictions: a Comprehensive SR (TID 1500 Measurement Report) per DICOM image,
which a PACS stores and a DICOM viewer draws over the image, and a reader of the SRs written here.

Needs ``pip install mammodetr[sr]`` (highdicom). See docs/deployment.md, "DICOM SR".
"""

from .export import SRExporter
from .reader import SRFindings, SRRegion, format_findings, read_sr
from .source import SourceImage, read_source
from .writer import AlgorithmInfo, SRSeries, build_sr, default_min_score, write_sr

__all__ = ["write_sr", "build_sr", "read_sr", "format_findings", "SRFindings", "SRRegion", "SRExporter",
           "SourceImage", "read_source", "AlgorithmInfo", "SRSeries", "default_min_score"]
