"""Evaluation: metrics (classification, detection, FROC, calibration, DeLong, bootstrap), the ``evaluate``
pipeline and report, run comparison, prediction and Grad-CAM. Submodules are imported where used."""
