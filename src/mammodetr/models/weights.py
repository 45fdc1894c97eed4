"""Reading weight files safely and loading them with a report of what did not fit.

Torch files are only ever read with ``weights_only=True``; callers that need extra classes
(e.g. an ``argparse.Namespace`` inside a training checkpoint) name them in ``safe_globals``.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

PRETRAINED_BACKBONE_FILE = "backbone.safetensors"  # what ``mammodetr pretrain`` writes
_CONTAINER_KEYS = ("state_dict", "model", "module", "model_state", "model_state_dict", "teacher")


class WeightsError(ValueError):
    """A weights file that cannot be read or does not fit the model."""


class HubUnavailableError(ValueError):
    """Hub weights were requested but cannot be fetched (offline, or hub client missing)."""


@dataclass
class LoadReport:
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        def short(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")

        return f"missing keys: [{short(self.missing)}]; unexpected keys: [{short(self.unexpected)}]"


def read_state_dict(path: str | Path, *, safe_globals: Iterable[object] = ()) -> dict[str, Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file (``weights_only=True``).

    Torch checkpoints that wrap the weights (``{"state_dict": ...}``, ``{"model": ...}``) are unwrapped. A folder
    written by ``mammodetr pretrain`` stands for its ``backbone.safetensors``.

    Raises:
        WeightsError: the file is missing, corrupt, or holds no tensors.
    """
    path = Path(path)
    if path.is_dir() and (path / PRETRAINED_BACKBONE_FILE).is_file():
        path = path / PRETRAINED_BACKBONE_FILE
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from exc
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message suggests weights_only=False, which would run whatever code the file holds: never.
        raise WeightsError(
            f"{path}: refused: the file holds Python objects besides tensors, and loading them could run code "
            f"(torch.load weights_only=True: {type(exc).__name__}); save the state dict as .safetensors instead"
        ) from exc
    except Exception as exc:
        raise WeightsError(
            f"{path}: cannot be read as a torch weights file with weights_only=True ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    return _unwrap(obj, path)


def _unwrap(obj: object, path: Path) -> dict[str, Tensor]:
    for _ in range(3):
        if isinstance(obj, Mapping) and obj and all(isinstance(v, Tensor) for v in obj.values()):
            return dict(obj)
        if isinstance(obj, Mapping):
            inner = next((obj[k] for k in _CONTAINER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
            if inner is None:
                break
            obj = inner
    if isinstance(obj, Mapping):
        tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
        if tensors:
            return tensors
    raise WeightsError(f"{path}: no tensors found (expected a state dict or a checkpoint holding one)")


def strip_prefixes(
    state_dict: Mapping[str, Tensor], prefixes: Iterable[str] = ("module.", "model.")
) -> dict[str, Tensor]:
    """Remove wrapper prefixes (DDP's ``module.``, hub exports' ``model.``) repeatedly from every key."""
    prefixes = tuple(prefixes)
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if key.startswith(p):
                    key, changed = key[len(p):], True
        out[key] = value
    return out


def load_state_dict_checked(
    module: nn.Module, state_dict: Mapping[str, Tensor], *, strict: bool, what: str
) -> LoadReport:
    """Load with shape checks first, so a mismatch names the key instead of a bare size error.

    With ``strict=False`` missing/unexpected keys are reported (logged and returned); shape mismatches
    are always an error because silently skipping them hides a wrong file.
    """
    own = module.state_dict()
    bad = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and tuple(own[k].shape) != tuple(v.shape)
    ]
    if bad:
        raise WeightsError(f"{what}: {len(bad)} tensors have the wrong shape: " + "; ".join(bad[:5]))
    report = LoadReport(
        missing=sorted(k for k in own if k not in state_dict),
        unexpected=sorted(k for k in state_dict if k not in own),
    )
    matched = len(own) - len(report.missing)
    if matched == 0:
        raise WeightsError(f"{what}: no key of the file matches the model ({report})")
    if strict and (report.missing or report.unexpected):
        raise WeightsError(f"{what}: keys do not match ({report})")
    module.load_state_dict(dict(state_dict), strict=False)
    if report.missing or report.unexpected:
        log.warning("%s: loaded %d/%d tensors; %s", what, matched, len(own), report)
    return report
