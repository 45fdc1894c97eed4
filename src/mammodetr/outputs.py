"""Where a command may write, and what it says when writing fails: the rules every command shares.

- **Inputs are never written over.** An output equal to an input, inside an input folder, or containing an input
  is refused before anything runs (:func:`check_separate`): an overlay written into the input folder replaced a
  16-bit input PNG with an 8-bit picture, and was read back as an input on the next run.
- **An earlier output is never replaced by accident.** An output that exists (a file, or a folder that is not
  empty) is refused unless the user asked for ``--overwrite`` (:func:`check_fresh`), and then it is moved aside
  to ``NAME.replaced-YYYYmmdd-HHMMSS`` beside it, never deleted (:func:`move_aside`).
- **Long outputs are streamed.** :class:`LineWriter` writes and flushes one line at a time; a failure (disk full,
  read-only) keeps every complete line, drops a half-written last one, and is one :class:`OutputWriteError`
  saying how many were saved.

Paths are compared after resolving symbolic links (``os.path.realpath``, which also works for paths that do not
exist yet), so ``runs/../data`` and a link to ``data`` are both seen as ``data``.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

__all__ = ["OutputConflictError", "OutputWriteError", "resolved", "is_within", "check_separate", "check_fresh",
           "move_aside", "claim_outputs", "move_all_aside", "count_within", "mirrored_paths", "write_error",
           "os_reason", "LineWriter"]

PathLike = str | os.PathLike[str]


class OutputConflictError(ValueError):
    """An output path that is refused before anything is written (it would replace an input or an output)."""


class OutputWriteError(OSError):
    """Writing an output failed; the message names the path, the reason and what was saved."""


def resolved(path: PathLike) -> Path:
    """``path`` absolute, with ``~`` expanded and symbolic links resolved (it need not exist)."""
    return Path(os.path.realpath(os.path.expanduser(os.fspath(path))))


def is_within(path: PathLike, folder: PathLike) -> bool:
    """True when ``path`` is ``folder`` or lies anywhere below it (both resolved)."""
    p, f = resolved(path), resolved(folder)
    return p == f or f in p.parents


def _same(a: PathLike, b: PathLike) -> bool:
    if resolved(a) == resolved(b):
        return True
    try:
        return os.path.samefile(a, b)  # hard links: two names, one file
    except OSError:
        return False


Named = Mapping[str, PathLike | None] | Iterable[tuple[str, PathLike | None]]


def _pairs(named: Named) -> list[tuple[str, PathLike]]:
    items = named.items() if isinstance(named, Mapping) else named
    return [(label, p) for label, p in items if p is not None]


def _named(label: str, path: PathLike) -> str:
    return f"{label} {path}" if label else str(path)


def check_separate(outputs: Named, inputs: Named) -> None:
    """Refuse any output that is an input, lies inside an input folder, or contains an input.

    Args:
        outputs: ``{label: path}`` (or pairs) of what the command will write, e.g. ``{"--out": "preds.jsonl"}``;
            None is skipped.
        inputs: the same for what it reads (files or folders); a label may be "" (a positional input).

    Raises:
        OutputConflictError: one line naming both paths.
    """
    for o_label, out in _pairs(outputs):
        for i_label, inp in _pairs(inputs):
            o, i = _named(o_label, out), _named(i_label, inp)
            if _same(out, inp):
                raise OutputConflictError(f"{o} is the same path as the input {i}: an output never replaces an "
                                          f"input; choose another {o_label or 'output'}")
            if is_within(out, inp):
                raise OutputConflictError(f"{o} lies inside the input folder {i}: what is written there could "
                                          f"replace an input or be read as one on the next run; choose "
                                          f"{o_label or 'an output'} outside it")
            if is_within(inp, out):
                raise OutputConflictError(f"{o} contains the input {i}: an output folder never holds the "
                                          f"inputs; choose {o_label or 'an output'} outside it")


def _aside_name(path: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.replaced-{stamp}")
    n = 2
    while target.exists() or target.is_symlink():
        target = path.with_name(f"{path.name}.replaced-{stamp}-{n}")
        n += 1
    return target


def _occupied(path: Path) -> bool:
    if path.is_dir() and not path.is_symlink():
        return any(path.iterdir())
    return path.exists() or path.is_symlink()


def check_fresh(path: PathLike, *, overwrite: bool, flag: str = "--out", hint: str = "") -> bool:
    """Refuse an output that exists (a file, or a non-empty folder) unless ``overwrite``.

    Args:
        path: the output file or folder.
        overwrite: the user passed ``--overwrite``: the caller will :func:`move_aside` it once the inputs checked out.
        flag: the option that named ``path``, for the message.
        hint: other ways out, e.g. "--resume to continue it, ".

    Returns:
        True when something is there (and ``overwrite`` allows moving it aside), False when the path is free.

    Raises:
        OutputConflictError: it exists and ``overwrite`` is False.
    """
    p = Path(path)
    if not _occupied(p):
        return False
    if not overwrite:
        what = "is a folder that is not empty" if p.is_dir() else "exists"
        raise OutputConflictError(f"{flag} {p} {what}: pass {hint}--overwrite to move it aside (to "
                                  f"{p.name}.replaced-<date>-<time>) and start a new one, or choose another {flag}")
    return True


def move_aside(path: PathLike) -> Path:
    """Rename ``path`` to ``NAME.replaced-YYYYmmdd-HHMMSS`` in the same folder (one rename, nothing copied or
    deleted); returns the new path."""
    p = Path(path)
    target = _aside_name(p)
    os.rename(p, target)
    return target


def mirrored_paths(files: Sequence[PathLike], out_dir: PathLike, ending: str,
                   strip_suffixes: Iterable[str] = ()) -> list[Path]:
    """One output path per input file under ``out_dir``, mirroring the inputs' paths below their common folder.

    ``a/case.dcm`` and ``b/case.dcm`` become ``out/a/case<ending>`` and ``out/b/case<ending>``. A suffix in
    ``strip_suffixes`` (``.dcm``, ``.png``) is replaced by ``ending``; any other name keeps its suffix (a DICOM
    named ``1.2.840.1.7`` keeps ``.7``). Two inputs that would still share a path (``case.dcm`` and ``case.png``)
    get ``-2``, ``-3``, ... in input order, so no output replaces another.
    """
    if not files:
        return []
    strip = {s.lower() for s in strip_suffixes}
    absolute = [Path(os.path.abspath(f)) for f in files]
    root = Path(os.path.commonpath([str(p.parent) for p in absolute]))
    taken: set[str] = set()
    out: list[Path] = []
    for p in absolute:
        rel = p.relative_to(root)
        stem = rel.stem if rel.suffix.lower() in strip else rel.name
        candidate, n = rel.with_name(stem + ending), 2
        while str(candidate).lower() in taken:  # case-insensitive file systems would merge Case and case
            candidate, n = rel.with_name(f"{stem}-{n}{ending}"), n + 1
        taken.add(str(candidate).lower())
        out.append(Path(out_dir) / candidate)
    return out


_REASONS = {errno.ENOSPC: "no space left on the device", errno.EROFS: "read-only file system",
            errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
            errno.EDQUOT: "disk quota exceeded", errno.EIO: "input/output error"}


def os_reason(exc: BaseException) -> str:
    """A short reason for a failed write: "no space left on the device", "read-only file system", ..."""
    if isinstance(exc, OSError) and exc.errno in _REASONS:
        return _REASONS[exc.errno]
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def write_error(path: PathLike, exc: BaseException, saved: str) -> OutputWriteError:
    """``OutputWriteError("<path>: cannot be written (<reason>); <saved>")``, errno kept."""
    err = OutputWriteError(f"{path}: cannot be written ({os_reason(exc)}); {saved}")
    err.errno = getattr(exc, "errno", None)
    return err


class LineWriter:
    """A new text file written one line (or one group of lines) at a time, each flushed as it comes.

    Use as a context manager. :meth:`write` counts what it saved; when a write fails the file is cut back to the
    last complete group and :class:`OutputWriteError` says how many were saved. When the run stops for another
    reason before anything was saved (an input, a model, a second output), the empty file is removed.

    Args:
        path: the file (its folder is created).
        unit: what one group is, for messages ("predictions", "exams").
    """

    def __init__(self, path: PathLike, unit: str = "lines") -> None:
        self.path, self.unit = Path(path), unit
        self.saved = 0
        self._good = 0  # bytes of complete groups
        self._failed = False
        self._file = None

    def __enter__(self) -> "LineWriter":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("w", encoding="utf-8", newline="\n")
        except OSError as exc:
            raise write_error(self.path, exc, "nothing was written") from exc
        return self

    def write(self, text: str) -> None:
        """Write ``text`` (whole lines) and flush it; one more group saved."""
        try:
            self._file.write(text)
            self._file.flush()
        except OSError as exc:
            self._failed = True
            self._cut_back()
            raise write_error(self.path, exc, f"stopped after {self.saved} {self.unit} were saved there") from exc
        self._good += len(text.encode("utf-8"))
        self.saved += 1

    def _cut_back(self) -> None:
        try:  # a half-written last line would make the whole file unreadable as JSON lines
            os.truncate(self.path, self._good)
        except OSError:
            pass

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self._file.close()
        except OSError:
            self._failed = True
        if self._failed:  # closing retries the buffered rest of the failed group
            self._cut_back()
        if exc is not None and self.saved == 0:
            self.path.unlink(missing_ok=True)
        if isinstance(exc, OutputWriteError) and str(self.path) not in str(exc):
            # Another output of the same run failed (an overlay, an SR): say what this file kept.
            kept = f"{self.saved} {self.unit} were saved in {self.path}" if self.saved else f"no {self.unit} were saved"
            raise OutputWriteError(f"{exc}; {kept}") from exc


def claim_outputs(outputs: Named, inputs: Named, *, overwrite: bool, hint: str = "") -> list[Path]:
    """:func:`check_separate`, then :func:`check_fresh` on every output: the checks a command runs before it
    starts. Returns the outputs that exist and must be moved aside (``overwrite``) once the run can start."""
    check_separate(outputs, inputs)
    pairs = _pairs(outputs)
    for k, (a_label, a) in enumerate(pairs):
        for b_label, b in pairs[k + 1:]:
            if resolved(a) == resolved(b):
                raise OutputConflictError(f"{a_label} and {b_label} are the same path {a}: give each its own")
    return [Path(p) for flag, p in pairs if check_fresh(p, overwrite=overwrite, flag=flag, hint=hint)]


def move_all_aside(paths: Iterable[PathLike]) -> list[str]:
    """:func:`move_aside` each path; returns one line per move, for the user to see."""
    return [f"--overwrite: moved the earlier {p} to {move_aside(p)}" for p in paths]


def count_within(paths: Iterable[PathLike], folder: PathLike) -> int:
    """How many of ``paths`` lie in ``folder`` (compared as absolute paths, without touching the disk: fast for
    the hundred thousand image paths of a dataset table)."""
    roots = {os.path.abspath(folder), str(resolved(folder))}
    prefixes = tuple(r.rstrip(os.sep) + os.sep for r in roots)
    n = 0
    for p in paths:
        a = os.path.abspath(p)
        n += a in roots or a.startswith(prefixes)
    return n
