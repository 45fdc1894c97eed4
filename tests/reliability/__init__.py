"""Reliability suite of issue 10 (a package, so its module names cannot clash with tests/test_*.py)."""
