"""Who may use the control plane's API and dashboard (``shipyard up --host/--token``).

On loopback (the default, ``127.0.0.1``) nothing is asked, as before, with two guards a browser
needs: a request whose ``Host`` is not a loopback name is refused (a DNS-rebinding page cannot
reach the API), and so is a POST or DELETE whose ``Origin`` is another site's.

Beyond loopback (``--host 0.0.0.0``...), or whenever a token is configured, every request but the
dashboard's static files and ``/healthz`` needs the token, as

- ``Authorization: Bearer TOKEN`` (the CLI and SDK: ``$SHIPYARD_TOKEN``, else ``plane.json``), or
- the cookie ``shipyard_token`` (HttpOnly, SameSite=Strict) that visiting ``/?token=TOKEN`` sets
  before redirecting to ``/`` (a wrong token redirects to ``/?invalid_token=1`` and sets nothing).

A POST or DELETE authenticated by the cookie must also carry ``X-Shipyard-Request: 1`` (a header a
cross-site form cannot send) and, when it has an ``Origin``, one that matches its ``Host``: else
403 naming why. A refused request gets 401 ``{"error": ...}``.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qs, urlsplit

from shipyard.server.rest import Request, Response, error_response

COOKIE = "shipyard_token"
ENV = "SHIPYARD_TOKEN"
CSRF_HEADER = "x-shipyard-request"
#: Paths served without a token: the dashboard's own files (they hold no data) and the liveness check.
PUBLIC_EXACT = ("/", "/index.html", "/healthz", "/favicon.ico")
PUBLIC_PREFIX = "/ui/"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
#: How long the browser keeps the cookie (seconds).
COOKIE_MAX_AGE = 30 * 24 * 3600


def is_loopback(host: str) -> bool:
    """Is ``host`` (an address or a name) only reachable from this machine?"""
    name = host.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def generate_token() -> str:
    return secrets.token_urlsafe(24)


def _split_host(host: str) -> tuple[str, int | None]:
    """``example.com:8400`` -> ``("example.com", 8400)``; ``[::1]:8400`` -> ``("::1", 8400)``; no port: None."""
    host = host.strip().lower()
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif host.count(":") == 1:
        name, _, port = host.partition(":")
    else:
        name, port = host, ""
    return name, int(port) if port.isdigit() else None


def _host_name(host: str) -> str:
    return _split_host(host)[0]


def _origin_matches(origin: str, host: str) -> bool:
    """Does an ``Origin`` header name the same host and port as the request's ``Host``?"""
    try:
        parts = urlsplit(origin.strip())
        origin_port = parts.port
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    default = 443 if parts.scheme == "https" else 80
    host_name, host_port = _split_host(host)
    return parts.hostname.lower() == host_name and (origin_port or default) == (host_port or default)


class Auth:
    """The API's gate: ``check(request)`` returns the refusal, or None to let the request through.

    ``token`` None means loopback mode (nothing asked but the browser guards above); ``host`` is the
    address the API listens on (a request naming it in ``Host`` is accepted in loopback mode too).
    """

    def __init__(self, token: str | None = None, host: str = "127.0.0.1") -> None:
        self.token = token or None
        self.host = host

    @property
    def required(self) -> bool:
        return self.token is not None

    def check(self, request: Request) -> Response | None:
        if request.path in ("/", "/index.html") and request.method in ("GET", "HEAD") and "token" in _query(request):
            return self._login(request)
        mutating = request.method not in SAFE_METHODS
        if self.token is None:
            return self._loopback(request, mutating)
        if request.method in ("GET", "HEAD") and (request.path in PUBLIC_EXACT or
                                                  request.path.startswith(PUBLIC_PREFIX)):
            return None
        bearer = request.headers.get("authorization", "")
        if bearer[:7].lower() == "bearer ":
            if self._valid(bearer[7:].strip()):
                return None
            return self._unauthorized("the bearer token is not this control plane's; use the token printed by "
                                      "`shipyard up` or written to plane.json ($SHIPYARD_TOKEN)")
        cookie = _cookie(request)
        if cookie is None:
            return self._unauthorized("this control plane requires a token (it listens beyond loopback): send "
                                      "'Authorization: Bearer TOKEN', or open /?token=TOKEN in the browser")
        if not self._valid(cookie):
            return self._unauthorized("the shipyard_token cookie is not this control plane's token (it changes "
                                      "when the plane restarts without --token); open /?token=TOKEN again")
        if mutating:
            if request.headers.get(CSRF_HEADER) != "1":
                return error_response(403, f"{request.method} with the dashboard's cookie must carry the header "
                                      "'X-Shipyard-Request: 1' (cross-site request protection)")
            return self._origin(request)
        return None

    # -- helpers -----------------------------------------------------------------------------------
    def _valid(self, presented: str) -> bool:
        return self.token is not None and hmac.compare_digest(presented.encode(), self.token.encode())

    def _login(self, request: Request) -> Response:
        """``/?token=T``: set the cookie and redirect to ``/`` (the token leaves the address bar)."""
        presented = (_query(request).get("token") or [""])[0]
        if self.token is None:
            return Response(303, b"", "text/plain; charset=utf-8", [("location", "/")])
        if not self._valid(presented):
            return Response(303, b"", "text/plain; charset=utf-8", [("location", "/?invalid_token=1"),
                                                                      ("cache-control", "no-store")])
        cookie = (f"{COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={COOKIE_MAX_AGE}")
        return Response(303, b"", "text/plain; charset=utf-8", [("location", "/"), ("set-cookie", cookie),
                                                                  ("cache-control", "no-store"),
                                                                  ("referrer-policy", "no-referrer")])

    def _loopback(self, request: Request, mutating: bool) -> Response | None:
        host = request.headers.get("host")
        if host is not None and not is_loopback(_host_name(host)) and _host_name(host) != self.host.lower():
            return error_response(403, f"Host '{host}' is not a loopback name; this control plane listens on "
                                  f"{self.host} only (start it with --host to serve other names, with a token)")
        if mutating:
            return self._origin(request)
        return None

    def _origin(self, request: Request) -> Response | None:
        origin = request.headers.get("origin")
        if origin is None:  # not a browser's cross-origin request (the CLI, curl, a same-origin GET form...)
            return None
        host = request.headers.get("host", "")
        if not _origin_matches(origin, host):
            return error_response(403, f"{request.method} from Origin '{origin}' refused: it is not this control "
                                  f"plane's ({host or 'no Host header'}); cross-site requests cannot change state")
        return None

    @staticmethod
    def _unauthorized(message: str) -> Response:
        response = error_response(401, message)
        response.headers.append(("www-authenticate", 'Bearer realm="shipyard"'))
        return response


def _query(request: Request) -> dict[str, list[str]]:
    return parse_qs(request.query, keep_blank_values=True) if request.query else {}


def _cookie(request: Request) -> str | None:
    header = request.headers.get("cookie")
    if not header:
        return None
    jar = SimpleCookie()
    try:
        jar.load(header)
    except CookieError:
        return None
    morsel = jar.get(COOKIE)
    return morsel.value if morsel is not None else None
