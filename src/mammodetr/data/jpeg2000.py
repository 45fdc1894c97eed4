"""The image size a JPEG 2000 codestream announces (its SIZ marker segment), read without decoding a pixel.

A decoder allocates what the codestream's SIZ segment says, whatever the DICOM header says: an 852-byte file whose
header says 256 x 208 can ask for 20000 x 20000 pixels. :func:`read_siz` reads the size, the number of components
and their bit depths (ITU-T T.800 Annex A.5.1) so that the DICOM reader can refuse a mismatch with the header, or a
size over the pixel cap, before anything is decoded. HTJ2K (ITU-T T.814) uses the same main header.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["CodestreamSize", "read_siz"]

_SOC_SIZ = b"\xff\x4f\xff\x51"  # start of codestream, immediately followed by the SIZ marker (T.800 A.4.1)
_SEARCH = 1 << 16  # a JP2 wrapper (not allowed in DICOM, yet seen) puts its boxes before the codestream
_FIXED = 38  # Lsiz .. Csiz
_MAX_COMPONENTS = 16384


@dataclass(frozen=True)
class CodestreamSize:
    """What a SIZ segment announces.

    Attributes:
        width, height: The image area, ``Xsiz - XOsiz`` by ``Ysiz - YOsiz`` reference-grid samples.
        components: ``Csiz``.
        bit_depths: Per component, bits per sample (``(Ssiz & 0x7F) + 1``).
        signed: Per component, whether samples are signed.
    """

    width: int
    height: int
    components: int
    bit_depths: tuple[int, ...]
    signed: tuple[bool, ...]


def read_siz(data: bytes) -> CodestreamSize:
    """Parse the SIZ segment at the start of a JPEG 2000 codestream (or inside the first 64 KiB of a JP2 file).

    Raises:
        ValueError: no codestream header, a truncated or inconsistent SIZ segment.
    """
    start = 0 if data.startswith(_SOC_SIZ) else data.find(_SOC_SIZ, 0, _SEARCH)
    if start < 0:
        raise ValueError("no JPEG 2000 codestream header (SOC and SIZ markers) at the start of the pixel data")
    seg = start + 4
    if len(data) < seg + _FIXED:
        raise ValueError("truncated JPEG 2000 SIZ segment")
    lsiz, _rsiz, xsiz, ysiz, xosiz, yosiz, _xt, _yt, _xto, _yto, csiz = struct.unpack_from(">HHIIIIIIIIH", data, seg)
    if not 1 <= csiz <= _MAX_COMPONENTS or lsiz != _FIXED + 3 * csiz or len(data) < seg + lsiz:
        raise ValueError("corrupt JPEG 2000 SIZ segment (its length and component count disagree)")
    if xsiz <= xosiz or ysiz <= yosiz:
        raise ValueError("corrupt JPEG 2000 SIZ segment (empty image area)")
    ssiz = data[seg + _FIXED: seg + lsiz: 3]
    return CodestreamSize(
        width=xsiz - xosiz,
        height=ysiz - yosiz,
        components=csiz,
        bit_depths=tuple((s & 0x7F) + 1 for s in ssiz),
        signed=tuple(bool(s & 0x80) for s in ssiz),
    )
