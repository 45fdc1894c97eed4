"""Atomic file writes (bytes, text, strict JSON): a reader never sees a half-written file, and a failed write
leaves nothing behind.

The data goes to a temporary file in the target's folder (same file system, so ``os.replace`` is an atomic
rename) and replaces the target only once it is complete. If writing fails (disk full, read-only folder) the
temporary file is removed and the previous file, if any, is left as it was. JSON is strict: NaN and infinities
become ``null`` (:func:`to_jsonable`).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["to_jsonable", "dumps", "write_bytes_atomic", "write_text_atomic", "write_json"]


def to_jsonable(obj: Any) -> Any:
    """Numpy scalars/arrays to Python, paths to strings and NaN/inf to None, recursively."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def dumps(obj: Any, indent: int | None = 2) -> str:
    """Strict JSON text of ``obj`` (see :func:`to_jsonable`)."""
    return json.dumps(to_jsonable(obj), indent=indent, allow_nan=False)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes, *, mode: int | None = None) -> Path:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``; returns ``path`` as a Path.

    ``mode`` (e.g. ``0o600`` for a private file) is the file's permission bits from the moment it exists;
    default: the umask's.
    """
    path = Path(path)
    # The process id keeps parallel workers writing the same folder apart.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if mode is None:
            tmp.write_bytes(data)
        else:
            tmp.unlink(missing_ok=True)  # a leftover of a killed run would keep its own mode
            with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb") as fh:
                fh.write(data)
            os.chmod(tmp, mode)  # the umask may have narrowed it
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` atomically; see :func:`write_bytes_atomic`."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any, indent: int | None = 2) -> Path:
    """Write ``obj`` as strict JSON, atomically."""
    return write_text_atomic(path, dumps(obj, indent) + "\n")
