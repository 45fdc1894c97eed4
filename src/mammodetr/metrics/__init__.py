"""Metrics: the numbers of ``metrics.md`` (classification, detection, FROC, calibration, breast level), patient
bootstrap intervals and DeLong tests. Pure numpy, each checked against an independent reference in the tests."""
