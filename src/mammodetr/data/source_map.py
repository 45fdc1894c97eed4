"""The private map from the keyed source hashes a prepared dataset holds back to the files they came from.

Folder and file names of a hospital export often carry a patient id or name, so ``prepare`` writes into the
dataset only ``src_<hex>``, an HMAC of each source path (relative to the input root) under the id key
(:mod:`~mammodetr.data.id_key`). The hash -> path mapping goes to a JSON file OUTSIDE the dataset folder, mode 0600:
by default ``source-maps/<dataset folder name>-<8 hex>.json`` beside the key file (the 8 hex digits tell two
datasets of the same name apart), or the file given with ``--source-map``. A re-run adds to the map; entries of
earlier runs stay. Format::

    {"format": 1, "dataset": "/abs/out", "input_root": "/abs/raw", "id_key_fingerprint": "...",
     "sources": {"src_0123456789abcdef0123": "P123/L_CC.dcm", ...}}
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from mammodetr.atomic import dumps, write_bytes_atomic
from mammodetr.data.id_key import IdKey, default_key_path, ensure_private_dir

__all__ = ["SourceMap", "default_source_map_path", "inside"]

FORMAT = 1
_HASH_HEX = 20


def inside(path: Path, folder: Path) -> bool:
    """``path`` is ``folder`` or lies under it (both resolved)."""
    p, f = Path(path).expanduser().resolve(), Path(folder).expanduser().resolve()
    return p == f or f in p.parents


def default_source_map_path(key: IdKey, dataset: Path) -> Path:
    """``<key folder>/source-maps/<dataset name>-<8 hex of the dataset's absolute path>.json``."""
    folder = (key.path.parent if key.path is not None else default_key_path().parent) / "source-maps"
    resolved = Path(dataset).expanduser().resolve()
    tag = hashlib.sha256(str(resolved).encode("utf-8")).hexdigest()[:8]
    return folder / f"{resolved.name or 'dataset'}-{tag}.json"


@dataclass
class SourceMap:
    """Source paths seen in one ``prepare`` run, by their keyed hash.

    Attributes:
        key: The id key the hashes are made with.
        path: The private file the map is written to.
        entries: Hash -> source path, for every path hidden so far.
    """

    key: IdKey
    path: Path
    entries: dict[str, str] = field(default_factory=dict)

    def hide(self, source: str) -> str:
        """The keyed hash written in place of ``source`` (remembered for :meth:`write`)."""
        h = "src_" + self.key.digest("source", source)[:_HASH_HEX]
        self.entries[h] = source
        return h

    def write(self, dataset: Path, input_root: Optional[Path]) -> Path:
        """Merge this run's entries into the file (created mode 0600, its folder 0700); returns its path."""
        old = _load(self.path)
        if old.get("id_key_fingerprint") not in (None, self.key.fingerprint):
            old = {}  # a map of another key: its hashes can never be looked up with this dataset again
        sources = {**old.get("sources", {}), **self.entries}
        data = {"format": FORMAT, "dataset": str(Path(dataset).resolve()),
                "input_root": str(Path(input_root).resolve()) if input_root is not None else None,
                "id_key_fingerprint": self.key.fingerprint, "sources": dict(sorted(sources.items()))}
        ensure_private_dir(self.path.parent)
        return write_bytes_atomic(self.path, (dumps(data, indent=1) + "\n").encode("utf-8"), mode=0o600)


def _load(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and isinstance(data.get("sources"), dict) else {}
