"""The site's secret id key: patient ids, study ids, image names and source paths are written only as keyed hashes.

A pseudonym is HMAC-SHA-256 of the identifier under a secret key kept OUTSIDE the dataset folder, so a shared
dataset cannot be re-identified by trying candidate ids (an unkeyed or salted hash can: the salt travels with
the data). The same key gives the same pseudonym for the same patient in every later ``prepare`` run of a site.

Where the key comes from, first match wins:

1. ``--id-key FILE`` (:func:`load_id_key` ``path``); created when missing.
2. The environment variable ``MAMMODETR_ID_KEY``, holding the key itself (for containers and CI secrets).
3. ``$XDG_CONFIG_HOME/mammodetr/id.key`` (default ``~/.config/mammodetr/id.key``); created when missing.

A created key file holds 64 hex digits (256 random bits) and has mode 0600 in a folder of mode 0700. Any text
of at least :data:`MIN_KEY_CHARS` characters serves as a key (its UTF-8 bytes are the HMAC key). A dataset
records only the key's :attr:`IdKey.fingerprint` (an HMAC of a fixed label, which tells nothing about the key or
any id), so a run with another key can be refused before it renames anything.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

__all__ = ["ENV_VAR", "MIN_KEY_CHARS", "IdKey", "default_key_path", "load_id_key", "ensure_private_dir"]

log = logging.getLogger(__name__)

ENV_VAR = "MAMMODETR_ID_KEY"
MIN_KEY_CHARS = 32
_FINGERPRINT_LABEL = b"mammodetr id-key fingerprint v1"
_MAX_KEY_FILE_BYTES = 4096


@dataclass(frozen=True)
class IdKey:
    """A secret HMAC key and where it came from.

    Attributes:
        secret: The key bytes (never printed: excluded from ``repr``).
        origin: Where it came from, for messages: ``"file <path>"`` or ``"environment variable MAMMODETR_ID_KEY"``.
        path: The key file, or None when the key came from the environment.
        created: True when this call created the key file.
    """

    secret: bytes = field(repr=False)
    origin: str
    path: Optional[Path] = None
    created: bool = False

    @property
    def fingerprint(self) -> str:
        """16 hex digits identifying the key (HMAC of a fixed label: one-way, and no help in guessing ids)."""
        return hmac.new(self.secret, _FINGERPRINT_LABEL, hashlib.sha256).hexdigest()[:16]

    def digest(self, kind: str, value: str) -> str:
        """HMAC-SHA-256 (hex) of ``value`` in the namespace ``kind`` ("patient", "study", "source", ...)."""
        return hmac.new(self.secret, f"{kind}\x00{value}".encode("utf-8"), hashlib.sha256).hexdigest()

    def pseudonym(self, kind: str, value: str) -> str:
        """The stand-in written for an identifier: ``"<k>_<16 hex>"`` (``p_...`` for a patient, ``s_...`` study)."""
        return f"{kind[0]}_{self.digest(kind, value)[:16]}"


def default_key_path(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/mammodetr/id.key``, else ``~/.config/mammodetr/id.key``."""
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or Path.home()) / ".config")
    return Path(base) / "mammodetr" / "id.key"


def load_id_key(path: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None) -> IdKey:
    """The key to pseudonymise with: ``path``, else ``$MAMMODETR_ID_KEY``, else the default file (see the module).

    Raises:
        ValueError: the key is too short, or the key file is not a regular file or cannot be read or created.
    """
    env = os.environ if env is None else env
    if path is None and env.get(ENV_VAR):
        return IdKey(_checked(env[ENV_VAR], f"environment variable {ENV_VAR}"), f"environment variable {ENV_VAR}")
    key_path = Path(path).expanduser() if path is not None else default_key_path(env)
    created = False
    if not os.path.lexists(key_path):
        created = _create_key_file(key_path)
    return IdKey(_read_key_file(key_path), f"file {key_path}", key_path, created)


def _checked(text: str, origin: str) -> bytes:
    key = text.strip()
    if len(key) < MIN_KEY_CHARS:
        raise ValueError(f"{origin}: an id key needs at least {MIN_KEY_CHARS} characters, this one has {len(key)} "
                         "(delete the file to have a new random key made, or see docs/security.md)")
    return key.encode("utf-8")


def ensure_private_dir(folder: Path) -> None:
    """Create ``folder`` (and missing parents) with mode 0700; an existing folder keeps its mode."""
    if folder.is_dir():
        return
    folder.mkdir(parents=True, mode=0o700, exist_ok=True)
    os.chmod(folder, 0o700)  # mkdir's mode is narrowed by the umask, never widened; set it exactly


def _create_key_file(path: Path) -> bool:
    """Write a new random key to ``path`` (mode 0600, its folder 0700); False when another process was faster."""
    try:
        ensure_private_dir(path.parent)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    except OSError as exc:
        raise ValueError(f"{path}: cannot create the id key file ({exc.strerror or type(exc).__name__})") from None
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(secrets.token_hex(32) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(path, 0o600)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    log.info("created the id key %s (mode 0600); back it up: see docs/security.md", path)
    return True


def _read_key_file(path: Path) -> bytes:
    """The key in ``path``; refuses anything but a small regular file and warns when others may read it."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the id key file ({exc.strerror or type(exc).__name__})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path}: the id key must be a regular file")
    if st.st_size > _MAX_KEY_FILE_BYTES:
        raise ValueError(f"{path}: {st.st_size} bytes is not an id key file (at most {_MAX_KEY_FILE_BYTES} bytes)")
    if st.st_mode & 0o077:
        log.warning("%s: the id key can be read by other users (mode %04o); run chmod 600 %s", path,
                    stat.S_IMODE(st.st_mode), path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the id key file ({type(exc).__name__})") from None
    return _checked(text, f"file {path}")
