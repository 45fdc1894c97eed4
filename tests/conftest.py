"""The whole test session runs with a private HOME: ``prepare`` creates its id key under ``~/.config/mammodetr``
when none is given (docs/security.md), and no test may read or write the real one. Set before any fixture runs, so
session-scoped fixtures that prepare a dataset are covered too; subprocesses inherit it."""

import os
import shutil
import tempfile

_SAVED: dict[str, str | None] = {}
_HOME: list[str] = []


def pytest_configure(config):
    home = tempfile.mkdtemp(prefix="mammodetr-test-home-")
    _HOME.append(home)
    for name, value in (("HOME", home), ("XDG_CONFIG_HOME", os.path.join(home, ".config")),
                        ("MAMMODETR_ID_KEY", None)):
        _SAVED[name] = os.environ.get(name)
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def pytest_unconfigure(config):
    for name, value in _SAVED.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    for home in _HOME:
        shutil.rmtree(home, ignore_errors=True)
