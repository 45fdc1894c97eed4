"""The viewer's settings (``mammodetr serve`` flags are generated from these fields)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ServeOptions"]


@dataclass(frozen=True)
class ServeOptions:
    """How the viewer serves.

    Attributes:
        host: address to listen on; anything but a loopback address exposes patient images to the network.
        port: TCP port (0: any free port; the address is printed at start).
        allow_host: Host header names accepted besides localhost, 127.0.0.1 and [::1] (the DNS-rebinding guard
            refuses every other name).
        max_upload_mb: largest file accepted in an upload, in MB.
        max_upload_files: most files in one upload.
        max_upload_pixels: most pixels (Rows x Columns x frames) an uploaded DICOM may announce; checked on
            the header, before any pixel is decoded.
        display_side: long side, in pixels, of the images sent to the browser.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    allow_host: tuple[str, ...] = ()
    max_upload_mb: int = 200
    max_upload_files: int = 8
    max_upload_pixels: int = 50_000_000
    display_side: int = 1024

    def __post_init__(self) -> None:
        if not 0 <= int(self.port) <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        for name in ("max_upload_mb", "max_upload_files", "max_upload_pixels"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 64 <= int(self.display_side) <= 8192:
            raise ValueError(f"display_side must be in 64..8192, got {self.display_side}")
