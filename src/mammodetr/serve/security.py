"""The viewer's guard, in front of every request: Host, Origin and the security headers of every response.

- Host: only ``localhost``, ``127.0.0.1`` and ``[::1]`` (any port) unless ``--allow-host`` adds names. A web
  page on another site that rebinds its DNS name to 127.0.0.1 still sends its own name as Host, so it is refused
  (DNS rebinding).
- Cross-origin requests: a POST (or any other method than GET/HEAD) whose ``Origin`` is not this server, or
  that a browser marks ``Sec-Fetch-Site: cross-site``/``same-site``, is refused; so is any cross-site request
  to ``/api/``. Scripts (curl, requests) send neither header and are served.
- Every response carries a strict Content-Security-Policy (scripts, styles and connections from this server
  only; no inline script; no framing), ``nosniff``, ``no-referrer`` and, under ``/api/``, ``no-store``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

__all__ = ["LOOPBACK_HOSTS", "CSP", "is_loopback", "host_name", "Guard"]

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]


def is_loopback(host: str) -> bool:
    """True for a loopback bind address (127.0.0.0/8, ::1, localhost)."""
    h = host.strip("[]").lower()
    return h in LOOPBACK_HOSTS or h.startswith("127.")


def host_name(value: str) -> str:
    """The host name of a Host header (port and IPv6 brackets removed, lower case)."""
    v = value.strip().lower()
    if v.startswith("["):
        return v[1:v.find("]")] if "]" in v else v
    return v.rsplit(":", 1)[0] if v.count(":") == 1 else v


class Guard:
    """ASGI middleware applying the rules of the module docstring.

    Args:
        app: the application behind it.
        allow_hosts: extra Host names accepted.
    """

    def __init__(self, app, allow_hosts: Iterable[str] = ()) -> None:
        self.app = app
        self.hosts = set(LOOPBACK_HOSTS) | {host_name(h) for h in allow_hosts}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                extra = list(_HEADERS)
                if scope["path"].startswith("/api/"):
                    extra.append((b"cache-control", b"no-store"))
                message = {**message, "headers": list(message.get("headers", [])) + extra}
            await send(message)

        if refusal is not None:
            body = json.dumps({"error": refusal}).encode()
            await send_with_headers({"type": "http.response.start", "status": 403,
                                     "headers": [(b"content-type", b"application/json"),
                                                 (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send_with_headers)

    def _refusal(self, scope) -> str | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        if host_name(host) not in self.hosts:
            return "host not allowed (start the server with --allow-host NAME to serve this name)"
        site = headers.get("sec-fetch-site", "")
        if scope["method"] not in ("GET", "HEAD"):
            origin = headers.get("origin")
            if origin is not None and origin != f"{scope.get('scheme', 'http')}://{host}":
                return "cross-origin request refused"
            if site in ("cross-site", "same-site"):
                return "cross-origin request refused"
        if scope["path"].startswith("/api/") and site == "cross-site":
            return "cross-origin request refused"
        return None
