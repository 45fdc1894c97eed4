"""Evaluation: a split's metrics written as files, Grad-CAM localisation scores, the report, and run comparison."""
