"""Run the viewer: bind (loopback unless told otherwise, loudly), serve until stopped, delete the uploads."""

from __future__ import annotations

import atexit
import logging
import signal
import socket
import sys
import threading

from .app import create_app
from .security import is_loopback
from .viewer import Viewer

__all__ = ["open_socket", "run_server", "exposure_warning"]


def exposure_warning(host: str) -> str:
    """The warning printed when the server listens on a non-loopback address."""
    line = "!" * 78
    return (f"{line}\n!! WARNING: listening on {host}, not on a loopback address: anyone who can reach this\n"
            f"!! machine on the network can see the patient images served here and upload files.\n"
            f"!! There is no login and no TLS. Use --host 127.0.0.1 (the default) unless the network\n"
            f"!! is private and you mean it; browsers must also be let in with --allow-host NAME.\n{line}")


def open_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free port)."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    sock.listen(128)
    return sock


class _Stopped(Exception):
    """SIGINT or SIGTERM arrived (uvicorn shuts down first, then re-raises the signal to the handler below)."""


def _stop(signum, frame) -> None:
    raise _Stopped


def run_server(viewer: Viewer) -> None:
    """Serve ``viewer`` until interrupted (Ctrl-C, SIGTERM); the upload folder is deleted however it stops."""
    import uvicorn

    atexit.register(viewer.store.close)
    # The predictor logs each unreadable file by its path; the viewer reports it to the page instead, and its
    # console must not name files (a path can hold a patient's name).
    quiet = logging.getLogger("mammodetr.inference")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    opts = viewer.options
    if not is_loopback(opts.host):
        print(exposure_warning(opts.host), file=sys.stderr, flush=True)
    sock = open_socket(opts.host, opts.port)
    port = sock.getsockname()[1]
    shown = "127.0.0.1" if opts.host in ("0.0.0.0", "::") else opts.host
    shown = f"[{shown}]" if ":" in shown else shown
    config = uvicorn.Config(create_app(viewer), log_level="warning", access_log=False, lifespan="off",
                            server_header=False, date_header=False, timeout_graceful_shutdown=3)
    print(f"mammodetr viewer on http://{shown}:{port}/ ({len(viewer.store.exams())} exams; research use only; "
          f"Ctrl-C stops it)", flush=True)
    main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except _Stopped:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
        viewer.store.close()
        quiet.setLevel(level)  # the process may go on (tests, a notebook): its logging is as it was
