"""Uploads: a multipart body streamed to server-named files in the private upload folder, within caps.

Nothing the client sends names a file on the server: each uploaded file is written as ``<random hex>.upload``
(created exclusively, mode 0600) while the body arrives, and the transfer stops with 413 as soon as a file is
larger than the cap, or there are more files than allowed; the partial files are then deleted. The client's
file name is kept only to be shown back in messages, never logged.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["UploadRefused", "UploadedFile", "receive_upload"]

_MAX_FIELD_BYTES = 4096  # a non-file form field (none are used; a small one is tolerated)


class UploadRefused(ValueError):
    """An upload the server will not take: ``status`` is the HTTP status, ``str()`` the reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass
class UploadedFile:
    """A file saved from an upload: the server-made path, the client's name (for messages only), its size."""

    path: Path
    client_name: str
    size: int = 0


@dataclass
class _State:
    folder: Path
    max_file_bytes: int
    max_files: int
    files: list[UploadedFile] = field(default_factory=list)
    header_field: bytes = b""
    headers: dict[bytes, bytes] = field(default_factory=dict)
    fd: int | None = None
    field_bytes: int = 0

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self.headers[self.header_field.lower()] = self.headers.get(self.header_field.lower(), b"") + data[start:end]

    def headers_finished(self) -> None:
        from python_multipart.multipart import parse_options_header

        _, params = parse_options_header(self.headers.get(b"content-disposition", b""))
        self.headers, self.field_bytes = {}, 0
        if b"filename" not in params:
            return
        if len(self.files) >= self.max_files:
            raise UploadRefused(413, f"too many files: at most {self.max_files} per upload")
        path = self.folder / f"{secrets.token_hex(12)}.upload"
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        name = params[b"filename"].decode("utf-8", "replace").replace("\\", "/").rsplit("/", 1)[-1]
        self.files.append(UploadedFile(path, name[:200] or f"file {len(self.files) + 1}"))

    def part_data(self, data: bytes, start: int, end: int) -> None:
        n = end - start
        if self.fd is None:
            self.field_bytes += n
            if self.field_bytes > _MAX_FIELD_BYTES:
                raise UploadRefused(413, "form field too large")
            return
        current = self.files[-1]
        current.size += n
        if current.size > self.max_file_bytes:
            raise UploadRefused(413, f"{current.client_name}: larger than the upload cap of "
                                     f"{self.max_file_bytes // 2**20} MB")
        os.write(self.fd, data[start:end])

    def part_end(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def discard(self) -> None:
        self.part_end()
        for f in self.files:
            f.path.unlink(missing_ok=True)


async def receive_upload(content_type: str, content_length: str | None, body: AsyncIterator[bytes], folder: Path, *,
                         max_file_bytes: int, max_files: int) -> list[UploadedFile]:
    """Stream a ``multipart/form-data`` body into ``folder``.

    Raises:
        UploadRefused: not multipart (415), a body announced or found larger than the caps allow (413), too many
            files (413), a malformed body (400). Partial files are deleted first.
    """
    from python_multipart.multipart import MultipartParser, parse_options_header

    kind, params = parse_options_header(content_type or "")
    if kind != b"multipart/form-data" or b"boundary" not in params:
        raise UploadRefused(415, "upload DICOM files as multipart/form-data")
    limit = max_files * (max_file_bytes + 16 * 1024)
    if content_length is not None and (not content_length.isdigit() or int(content_length) > limit):
        raise UploadRefused(413, f"upload too large: at most {max_files} files of {max_file_bytes // 2**20} MB")
    state = _State(folder, max_file_bytes, max_files)
    parser = MultipartParser(params[b"boundary"], {
        "on_header_field": lambda d, s, e: setattr(state, "header_field", state.header_field + d[s:e]),
        "on_header_value": state.header_value,
        "on_header_end": lambda: setattr(state, "header_field", b""),
        "on_headers_finished": state.headers_finished,
        "on_part_data": state.part_data,
        "on_part_end": state.part_end,
    })
    received = 0
    try:
        async for chunk in body:
            received += len(chunk)
            if received > limit:
                raise UploadRefused(413, "upload too large")
            parser.write(chunk)
        parser.finalize()
    except UploadRefused:
        state.discard()
        raise
    except Exception as exc:  # noqa: BLE001 - python-multipart raises its own errors on a malformed body
        state.discard()
        raise UploadRefused(400, f"malformed upload ({type(exc).__name__})") from None
    state.part_end()
    if not state.files:
        raise UploadRefused(400, "the upload holds no file")
    return state.files
