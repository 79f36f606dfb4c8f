"""What the web server answers, before Gradio or the API see a request: Host names (DNS rebinding), cross-site
requests (CSRF), CORS, protective response headers, and the sign-in throttle on the page's login form.

Why a Host allow-list: with no password on 127.0.0.1, a web page could point its own host name at 127.0.0.1
(DNS rebinding) and then talk to the app as if it were the app's own page. Such requests carry the page's
name in `Host`; this machine's own names never do.

The guard wraps the whole server app (Gradio's routes and /sdapi alike) from the outside. Gradio's own CORS
middleware trusts any origin as soon as the Host is not `localhost`, and any `http://localhost:*` otherwise,
with credentials; the guard answers preflights itself and replaces whatever CORS headers come back from the
inside, so only the origins the user allows are ever granted.
"""

from __future__ import annotations

import ipaddress
import math
import re
import sys
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse, PlainTextResponse

from .auth import SignInThrottle
from .errors import UserError

LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOGIN_PATHS = frozenset({"/login", "/login/"})  # Gradio's sign-in form posts here
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
# Colab's proxied view of a kernel port: served from these Google domains, framed by colab.research.google.com.
# Nobody but Google can point these names at a machine, so they cannot be used for DNS rebinding.
COLAB_PROXY_SUFFIXES = (".colab.dev", ".googleusercontent.com")
COLAB_FRAME_ANCESTORS = ("https://colab.research.google.com", "https://*.googleusercontent.com", "https://*.colab.dev")
_HOST = re.compile(r"^(\[[0-9a-f:.]+\]|[a-z0-9_.-]+)(?::(\d{1,5}))?$")
MAX_LOGGED_HOSTS = 50


def split_host(value: str | None) -> tuple[str, int | None] | None:
    """`Host` header -> (name, port); None when it is missing or malformed. Names are lower-case, without
    brackets (IPv6) or the trailing dot of a fully qualified name."""
    match = _HOST.match((value or "").strip().lower())
    if not match:
        return None
    name = match.group(1).strip("[]").rstrip(".")
    return (name, int(match.group(2)) if match.group(2) else None) if name else None


def split_origin(value: str) -> tuple[str, str, int] | None:
    """`Origin` -> (scheme, host, port with the scheme's default filled in); None for `null` or junk."""
    try:
        parts = urlsplit(value.strip().lower())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/"):
        return None
    return parts.scheme, parts.hostname.rstrip("."), port or DEFAULT_PORTS[parts.scheme]


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


@dataclass
class WebPolicy:
    """Which hosts, origins and framing the server accepts. Built once from the flags (`from_flags`)."""

    hosts: set[str] = field(default_factory=lambda: set(LOCAL_NAMES))  # exact names
    host_suffixes: tuple[str, ...] = ()  # ".example.com": that domain and every name below it
    any_ip: bool = False  # --listen: the machine may be reached by any of its addresses (or a NAT's)
    cors_origins: frozenset[str] = frozenset()  # "scheme://host[:port]" allowed to call with credentials
    trusted_origin_suffixes: tuple[str, ...] = ()  # https origins on these domains count as the app's own
    frame_ancestors: tuple[str, ...] = ()  # () -> the page may not be framed at all

    @classmethod
    def from_flags(cls, listen: bool, allowed_hosts: str | None, cors_origins: str | None,
                   colab: bool = False) -> "WebPolicy":
        hosts, suffixes = set(LOCAL_NAMES), []
        for entry in _items(allowed_hosts):
            name = _host_entry(entry)
            (suffixes.append(name) if name.startswith(".") else hosts.add(name))
        origins = frozenset(_origin_entry(entry) for entry in _items(cors_origins))
        if colab:  # the notebook's proxied view; see COLAB_PROXY_SUFFIXES
            suffixes.extend(COLAB_PROXY_SUFFIXES)
        return cls(hosts=hosts, host_suffixes=tuple(suffixes), any_ip=listen, cors_origins=origins,
                   trusted_origin_suffixes=COLAB_PROXY_SUFFIXES if colab else (),
                   frame_ancestors=COLAB_FRAME_ANCESTORS if colab else ())

    def allow_host(self, name: str) -> None:
        """Accept one more exact name (the share link's host, known only once Gradio has made it)."""
        self.hosts.add(name.lower().rstrip("."))

    def host_allowed(self, header: str | None) -> bool:
        parsed = split_host(header)
        if parsed is None:
            return False
        name = parsed[0]
        if name in self.hosts or any(name.endswith(s) or name == s[1:] for s in self.host_suffixes):
            return True
        return self.any_ip and _is_ip(name)

    def same_origin(self, origin: str, host_header: str | None) -> bool:
        """The request comes from a page this server served: the Origin's host and port are the Host's."""
        parsed, host = split_origin(origin), split_host(host_header)
        if parsed is None or host is None:
            return False
        scheme, name, port = parsed
        if name != host[0]:
            return False
        # A Host without a port was reached on the scheme's default port (a TLS proxy such as the share link).
        return host[1] == port or (host[1] is None and port in (80, 443))

    def cors_allowed(self, origin: str) -> bool:
        parsed = split_origin(origin)
        return parsed is not None and _origin_text(*parsed) in self.cors_origins

    def trusted(self, origin: str, host_header: str | None) -> bool:
        if self.same_origin(origin, host_header) or self.cors_allowed(origin):
            return True
        parsed = split_origin(origin)
        return bool(parsed and parsed[0] == "https"
                    and any(parsed[1].endswith(s) for s in self.trusted_origin_suffixes))

    def cross_site(self, headers: Headers) -> bool:
        """A browser sent this on behalf of another site. Clients that are not browsers send neither header."""
        origin = headers.get("origin")
        if origin is not None:
            return not self.trusted(origin, headers.get("host"))
        # No Origin: browsers still say where a request comes from in Sec-Fetch-Site. "same-site" is another
        # port or subdomain (http://localhost:3000 for an app on :7860): another site for this purpose.
        return headers.get("sec-fetch-site", "").lower() in ("cross-site", "same-site")

    def protective_headers(self) -> list[tuple[str, str]]:
        if self.frame_ancestors:
            frame = [("content-security-policy", "frame-ancestors 'self' " + " ".join(self.frame_ancestors))]
        else:
            frame = [("x-frame-options", "DENY"), ("content-security-policy", "frame-ancestors 'none'")]
        return [("x-content-type-options", "nosniff"), ("referrer-policy", "no-referrer"), *frame]


class WebGuard:
    """The ASGI layer that applies a `WebPolicy` (and the sign-in throttle on the login form) to every request.

    Installed from the app's lifespan (see `lifespan`), which runs before the server accepts its first
    connection and after Starlette has built Gradio's middleware stack, so the guard sits outside all of it.
    """

    def __init__(self, policy: WebPolicy, throttle: SignInThrottle | None = None, log=None):
        self.policy = policy
        self.throttle = throttle
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.installed = False
        self._logged_hosts: set[str] = set()

    @asynccontextmanager
    async def lifespan(self, app):
        """Give as `app_kwargs={"lifespan": guard.lifespan}` to Gradio's launch()."""
        inner = app.middleware_stack
        if inner is None:  # Starlette builds it before running the lifespan; never serve unguarded if not
            inner = app.middleware_stack = app.build_middleware_stack()
        app.middleware_stack = self.wrap(inner)
        self.installed = True
        yield

    def wrap(self, inner):
        async def guarded(scope, receive, send):
            if scope["type"] not in ("http", "websocket"):
                await inner(scope, receive, send)
                return
            await self._guard(inner, scope, receive, send)

        return guarded

    async def _guard(self, inner, scope, receive, send) -> None:
        headers = Headers(scope=scope)
        host = headers.get("host")
        websocket = scope["type"] == "websocket"
        if not self.policy.host_allowed(host):
            self._log_refused_host(host)
            if websocket:
                await send({"type": "websocket.close", "code": 1008})
                return
            text = (f"Invalid Host header {(host or '')[:100]!r}: this server answers only to its own names. If that is "
                    "your name for it, start Homegrown with --allowed-hosts NAME.")
            await self._reply(PlainTextResponse(text, status_code=400), scope, receive, send)
            return
        if websocket:
            if self.policy.cross_site(headers):
                await send({"type": "websocket.close", "code": 1008})
                return
            await inner(scope, receive, send)
            return
        method = scope["method"]
        origin = headers.get("origin")
        if origin is not None and method == "OPTIONS" and "access-control-request-method" in headers:
            await self._preflight(origin, headers, scope, receive, send)
            return
        if method not in SAFE_METHODS and self.policy.cross_site(headers):
            await self._reply(JSONResponse({"error": "CrossSiteRequest", "detail": (
                "refused: another web site asked your browser to send this. Allow that site's origin with "
                "--cors-allow-origins if it is yours."), "field": None}, status_code=403), scope, receive, send)
            return
        if self.throttle is not None and method == "POST" and scope["path"] in LOGIN_PATHS:
            await self._login(inner, scope, receive, send, origin)
            return
        await inner(scope, receive, self._sender(send, origin))

    async def _login(self, inner, scope, receive, send, origin) -> None:
        client = (scope.get("client") or ("unknown",))[0]
        wait = self.throttle.begin(client)
        if wait:
            await self._reply(_too_many(wait), scope, receive, send, origin)
            return
        status = []

        async def watch(message):
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        try:
            await inner(scope, receive, self._sender(watch, origin))
        finally:
            # Gradio answers 200 for the right password and 400 for a wrong one.
            (self.throttle.succeeded if status and status[0] < 300 else self.throttle.failed)(client)

    async def _preflight(self, origin, headers, scope, receive, send) -> None:
        if not self.policy.trusted(origin, headers.get("host")):
            await self._reply(PlainTextResponse("Disallowed CORS origin", status_code=400), scope, receive, send)
            return
        allow = {"access-control-allow-origin": origin, "access-control-allow-credentials": "true",
                 "access-control-allow-methods": "GET, POST, PUT, PATCH, DELETE, OPTIONS",
                 "access-control-max-age": "600", "vary": "Origin"}
        if "access-control-request-headers" in headers:
            allow["access-control-allow-headers"] = headers["access-control-request-headers"]
        await self._reply(PlainTextResponse("OK", headers=allow), scope, receive, send)

    async def _reply(self, response, scope, receive, send, origin=None) -> None:
        """Send one of the guard's own answers (they carry no CORS headers but the preflight's own)."""
        await response(scope, receive, self._sender(send, origin, inner=False))

    def _sender(self, send, origin: str | None, inner: bool = True):
        allowed_origin = origin if origin is not None and self.policy.cors_allowed(origin) else None
        protective = self.policy.protective_headers()

        async def sender(message):
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                headers = MutableHeaders(scope=message)
                for name in [k for k in headers.keys() if inner and k.startswith("access-control-")]:
                    del headers[name]  # Gradio's own CORS answer: replaced by ours below
                if allowed_origin:
                    headers["access-control-allow-origin"] = allowed_origin
                    headers["access-control-allow-credentials"] = "true"
                    headers.add_vary_header("Origin")
                for name, value in protective:
                    if name == "content-security-policy":
                        headers.append(name, value)  # alongside any policy of the page: both apply
                    else:
                        headers[name] = value
            await send(message)

        return sender

    def _log_refused_host(self, host: str | None) -> None:
        key = (host or "")[:100]
        if key in self._logged_hosts or len(self._logged_hosts) >= MAX_LOGGED_HOSTS:
            return
        self._logged_hosts.add(key)
        self.log(f"web: refused a request for host {key!r} (not one of this server's names; if it is yours, "
                 "add it with --allowed-hosts)")


def _too_many(wait: float) -> JSONResponse:
    seconds = math.ceil(wait)
    return JSONResponse({"error": "TooManyAttempts", "detail": f"too many failed sign-ins from this address: try "
                         f"again in {seconds} s", "field": None},
                        status_code=429, headers={"Retry-After": str(seconds)})


def _items(text: str | None) -> list[str]:
    return [item.strip() for item in (text or "").replace("\n", ",").split(",") if item.strip()]


def _host_entry(entry: str) -> str:
    """An --allowed-hosts entry: a name, an IP address, or `.example.com` for a domain and its subdomains."""
    suffix = entry.startswith(".")
    parsed = split_host(entry[1:] if suffix else entry)
    if "/" in entry or parsed is None or (suffix and "." not in parsed[0]):
        raise UserError(f"{entry!r} is not a host name: give names such as mybox.local, 192.168.1.20 or "
                        ".example.com (a domain and its subdomains), without http:// or a path", field="allowed-hosts")
    return ("." if suffix else "") + parsed[0]


def _origin_entry(entry: str) -> str:
    if entry.strip() == "*":
        raise UserError("'*' would let every web site use this app with your browser's sign-in: list the origins "
                        "(such as https://tools.example.com)", field="cors-allow-origins")
    parsed = split_origin(entry)
    if parsed is None:
        raise UserError(f"{entry!r} is not an origin: write scheme://host[:port], such as http://localhost:3000",
                        field="cors-allow-origins")
    return _origin_text(*parsed)


def _origin_text(scheme: str, host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}" + ("" if port == DEFAULT_PORTS[scheme] else f":{port}")
