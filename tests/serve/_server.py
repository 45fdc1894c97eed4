"""Helpers of the viewer tests: run ``mammodetr serve`` in a subprocess, read canvas pixels."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Server:
    url: str
    port: int
    proc: subprocess.Popen
    tmpdir: Path
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


def start_server(data, tmp: Path, *extra: str) -> Server:
    """``mammodetr serve`` in a subprocess on a free loopback port; returns once it prints its address."""
    tmpdir = tmp / "tmp"
    tmpdir.mkdir()
    err = tmp / "stderr.txt"
    env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "mammodetr", "serve", "--checkpoint", str(data.checkpoint), "--images",
           str(data.exams), "--port", "0", "--device", "cpu", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err.open("w"), env=env, text=True)
    deadline = time.monotonic() + 120
    line = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        if m:
            return Server(m.group(0), int(m.group(1)), proc, tmpdir, err)
        if proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"serve did not start: {line!r}\n{err.read_text()}")


def stop_server(server: Server) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()


def gray_stats(rgba: np.ndarray) -> dict:
    """Counts on an (H, W, 4) canvas: lit pixels, coloured (not grey) pixels, box-yellow pixels."""
    rgb = rgba[..., :3].astype(int)
    spread = rgb.max(-1) - rgb.min(-1)
    yellow = (rgb[..., 0] > 200) & (rgb[..., 1] > 160) & (rgb[..., 2] < 110)
    return {"lit": int((rgb.max(-1) > 20).sum()), "coloured": int((spread > 40).sum()), "yellow": int(yellow.sum())}
