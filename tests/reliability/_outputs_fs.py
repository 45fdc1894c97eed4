"""Test helpers for the output side of the reliability suite: a read-only or filling-up folder, hostile files.

Running as root, ``chmod`` cannot make a folder read-only, so :func:`read_only` and :func:`disk_full` patch the
functions that write files (``open``/``io.open``, ``os.open``, ``os.mkdir``, renames, links, truncation) to
behave as a real file system would below one folder: refuse with EROFS, or accept bytes up to a budget and then
fail with ENOSPC part-way through a write. Reads are untouched.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import io
import os
import struct
from pathlib import Path

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _under(path, root: Path) -> bool:
    if isinstance(path, int):
        return False
    p = os.path.realpath(os.fspath(path))
    return p == str(root) or p.startswith(str(root) + os.sep)


def _writes(mode: str) -> bool:
    return any(c in mode for c in "wax+")


class _Full:
    """A file object that accepts bytes until the shared budget is spent, then writes what fits and fails."""

    def __init__(self, f, budget: dict) -> None:
        self._f, self._budget = f, budget

    def write(self, data):
        size = len(data.encode("utf-8")) if isinstance(data, str) else len(data)
        if size > self._budget["left"]:
            fits = self._budget["left"]
            self._f.write(data[:fits])  # a real disk takes what fits first
            self._f.flush()
            self._budget["left"] = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._budget["left"] -= size
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def _patch_fs(monkeypatch, root: Path, on_open, refuse) -> None:
    real_open, real_os_open = builtins.open, os.open

    def fake_open(file, mode="r", *args, **kwargs):
        if _writes(mode) and _under(file, root):
            return on_open(real_open, file, mode, *args, **kwargs)
        return real_open(file, mode, *args, **kwargs)

    def fake_os_open(path, flags, *args, **kwargs):
        if flags & _WRITE_FLAGS and _under(path, root):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)
    for name in ("mkdir", "rmdir", "unlink", "remove", "truncate"):
        real = getattr(os, name)

        def guarded(path, *args, _real=real, **kwargs):
            if _under(path, root):
                refuse(path)
            return _real(path, *args, **kwargs)

        monkeypatch.setattr(os, name, guarded)
    for name in ("rename", "replace", "link", "symlink"):
        real = getattr(os, name)

        def guarded2(src, dst, *args, _real=real, **kwargs):
            if _under(src, root) or _under(dst, root):
                refuse(dst)
            return _real(src, dst, *args, **kwargs)

        monkeypatch.setattr(os, name, guarded2)


def read_only(monkeypatch, root: Path) -> None:
    """Everything at or below ``root`` is read-only (EROFS) for the rest of the test."""
    root = Path(os.path.realpath(root))

    def refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))

    def on_open(real_open, file, mode, *args, **kwargs):
        refuse(file)

    _patch_fs(monkeypatch, root, on_open, refuse)


def disk_full(monkeypatch, root: Path, budget: int) -> dict:
    """Files written at or below ``root`` share ``budget`` bytes; the write that passes it fails with ENOSPC
    after writing what fits. Creating folders and renames still work (as on a full disk). Returns the budget."""
    root = Path(os.path.realpath(root))
    left = {"left": budget}

    def refuse(path):
        if left["left"] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path))

    def on_open(real_open, file, mode, *args, **kwargs):
        return _Full(real_open(file, mode, *args, **kwargs), left)

    _patch_fs(monkeypatch, root, on_open, lambda path: None)
    return left


def tree(root: Path) -> dict[str, str]:
    """``{relative path: SHA-256}`` of every file below ``root`` (folders as "dir"): compare before and after."""
    out = {}
    for p in sorted(Path(root).rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def flip_weight_byte(model_file: Path) -> None:
    """Flip one byte in the middle of the tensor data of a safetensors file (not its JSON header): the file still
    loads, with one changed weight."""
    data = bytearray(model_file.read_bytes())
    (header_len,) = struct.unpack("<Q", data[:8])
    start = 8 + header_len
    data[start + (len(data) - start) // 2] ^= 0x10
    model_file.write_bytes(bytes(data))


class Payload:
    """Unpickling this runs ``os.mkdir(marker)``: a file that would run code if mammodetr ever unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def write_pickle_payload(path: Path, marker: Path, wrap: str | None = "state_dict") -> Path:
    """A torch file whose unpickling would create ``marker`` (``{wrap: {"w": payload}}``)."""
    import torch

    obj = {"w": Payload(marker)}
    torch.save({wrap: obj} if wrap else obj, path)
    return path


def tiny_checkpoint(folder: Path) -> Path:
    """A real, untrained checkpoint of the tiny ConvNeXtV2 model of tests/evaluation (64 px input)."""
    import torch

    from mammodetr import ModelConfig, RunConfig, build_model
    from mammodetr.checkpoint import save_checkpoint
    from mammodetr.data.preprocess import PrepareOptions

    torch.manual_seed(0)
    config = RunConfig(model=ModelConfig(backbone="convnextv2_tiny", pretrained="none",
                                         backbone_options={"depths": [1, 1, 1, 1], "dims": [16, 32, 64, 128]},
                                         d_model=32, nheads=4, dim_feedforward=64, dec_layers=1))
    config.data.image_size, config.data.letterbox, config.data.prepare = 64, True, PrepareOptions(max_side=96)
    return save_checkpoint(folder, build_model(config.model), config)


def breast_png(path: Path, seed: int, size=(120, 90)) -> Path:
    """A 16-bit PNG with a bright "breast" on the left, like the tests/evaluation images."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = size
    a = np.zeros((h, w), np.uint16)
    a[10:h - 10, 5:int(0.75 * w)] = (rng.random((h - 20, int(0.75 * w) - 5)) * 40000 + 10000).astype(np.uint16)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)
    return path
