"""Who may talk to the explorer: the Host, Origin and Sec-Fetch-Site rules, and body types.

The explorer has no login, so it answers only requests a page of its own could make.
:class:`RequestGuard` (ASGI middleware) checks, before any route runs:

* **Host** (every request; no DNS rebinding): the ``Host`` header's name must be one of
  :class:`HostRule`'s names. Bound to a loopback address (the default): ``127.0.0.1``,
  ``localhost``, ``::1`` and that address. Bound to a specific other address: that
  address, the loopback names, this machine's host name and its fully qualified name.
  Bound to every address (``0.0.0.0`` or ``::``): the loopback names, the machine's
  names, and any IP address written as such (a rebinding page is reached through a
  *name* the attacker controls, so an address literal cannot be one). Names given with
  ``--allow-host`` are added in every case. Ports are not compared.
* **Origin and Sec-Fetch-Site** (``/api/`` requests, and any method other than GET and
  HEAD anywhere): an ``Origin`` header, when sent, must be this server's own origin
  (``http://`` + the ``Host`` header; ``null`` is refused), and ``Sec-Fetch-Site``, when
  sent, must be ``same-origin`` or ``none`` (typed address, bookmark). ``cross-site`` and
  ``same-site`` are refused: a page on another port of ``localhost`` is the same *site*
  but not this server. Requests without either header (curl, scripts) pass: a browser
  always sends ``Origin`` on a cross-origin POST.
* **Body types** (:func:`require_media_type`, called by the routes that read a body):
  ``/api/run`` takes ``application/json`` and ``/api/upload`` ``application/octet-stream``.
  Neither is a CORS-safelisted type, so a foreign page cannot send them without a CORS
  preflight, which this server never grants.

Refusals are JSON ``{"error": "<one sentence>"}``: 400 for a host name, 403 for an
origin, 415 for a body type.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

#: Names that always reach this machine.
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")

#: Addresses that mean "every interface".
WILDCARD_HOSTS = ("0.0.0.0", "::", "")

#: ``Sec-Fetch-Site`` values of requests made by this server's own page (or typed in).
OWN_FETCH_SITES = ("same-origin", "none")


class WrongMediaType(Exception):
    """A request body of a type the route does not take (415)."""


def is_loopback(host: str) -> bool:
    """Whether ``--host`` listens on this machine only (``localhost`` or a loopback address)."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _machine_names() -> set[str]:
    """The machine's host name and fully qualified name (lower case)."""
    names = {socket.gethostname().lower()}
    try:
        names.add(socket.getfqdn().lower())
    except OSError:  # a resolver that fails: the plain host name is enough
        pass
    return {name for name in names if name}


@dataclass(frozen=True)
class HostRule:
    """The ``Host`` header names a server accepts (see the module docstring).

    Attributes:
        names: accepted names, lower case, IPv6 without brackets.
        any_address: also accept any IP address literal (servers bound to every address).

    """

    names: frozenset[str]
    any_address: bool = False

    @classmethod
    def for_bind(cls, host: str, extra: Iterable[str] = ()) -> HostRule:
        """The rule of a server listening on ``host`` (``--host``), plus ``extra`` names."""
        bound = host.strip("[]").lower()
        names = {*LOOPBACK_NAMES, *(_name(e) for e in extra)}
        if bound in WILDCARD_HOSTS:
            return cls(frozenset(names | _machine_names()), any_address=True)
        names.add(bound)
        if not is_loopback(bound):
            names |= _machine_names()
        return cls(frozenset(names))

    def accepts(self, header: str) -> bool:
        """Whether a ``Host`` header value (``name[:port]``, ``[v6][:port]``) is accepted."""
        parsed = _split_host(header)
        if parsed is None:
            return False
        return parsed[0] in self.names or (self.any_address and _is_address(parsed[0]))


def _name(text: str) -> str:
    return text.strip().strip("[]").rstrip(".").lower()


def _split_host(text: str) -> tuple[str, str | None] | None:
    """``(name, port or None)`` of ``name[:port]`` or ``[v6][:port]``, lower case; None when malformed."""
    text = text.strip()
    if text.startswith("["):
        name, closed, rest = text[1:].partition("]")
        if not closed:
            return None
    elif text.count(":") > 1:  # a bare IPv6 address
        name, rest = text, ""
    else:
        name, colon, port = text.partition(":")
        rest = colon + port
    if rest and not (rest.startswith(":") and rest[1:].isascii() and rest[1:].isdecimal()):
        return None
    name = name.rstrip(".").lower()
    return (name, rest[1:] or None) if name else None


def same_origin(origin: str, host: str, scheme: str) -> bool:
    """Whether an ``Origin`` header names the server reached as ``scheme://host`` (default ports filled)."""
    their_scheme, separator, authority = origin.strip().lower().partition("://")
    if not separator or their_scheme != scheme or "/" in authority:
        return False  # "null" and anything malformed
    default = "443" if scheme == "https" else "80"
    theirs, ours = _split_host(authority), _split_host(host)
    if theirs is None or ours is None:
        return False
    return (theirs[0], theirs[1] or default) == (ours[0], ours[1] or default)


def require_media_type(request: Request, expected: str, what: str) -> None:
    """Raise :class:`WrongMediaType` unless the body's ``Content-Type`` is ``expected``.

    Args:
        request: the request.
        expected: the media type, e.g. ``application/json`` (parameters such as
            ``charset`` are allowed).
        what: what the body is, for the sentence ("the run request").

    """
    given = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if given != expected:
        shown = f"'{given[:60]}'" if given else "no type"
        raise WrongMediaType(f"Send {what} as Content-Type: {expected} (got {shown}).")


class RequestGuard:
    """ASGI middleware enforcing the Host, Origin and Sec-Fetch-Site rules of the module docstring.

    Args:
        app: the application.
        hosts: the accepted ``Host`` names.

    """

    def __init__(self, app: Any, hosts: HostRule) -> None:
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        """Answer a refused request itself; pass the others on."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[str, list[str]] = {}
        for key, value in scope["headers"]:
            headers.setdefault(key.decode("latin-1").lower(), []).append(value.decode("latin-1"))
        refusal = self.refusal(scope, headers)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, message = refusal
        body = json.dumps({"error": message}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def refusal(self, scope: dict, headers: dict[str, list[str]]) -> tuple[int, str] | None:
        """``(status, sentence)`` of a refused request, or None.

        Args:
            scope: the ASGI scope.
            headers: every value of each header (lower-case names): one ``Host`` exactly,
                and every ``Origin`` and ``Sec-Fetch-Site`` value must pass.

        """
        hosts = headers.get("host", [])
        if len(hosts) != 1 or not self.hosts.accepts(hosts[0]):
            return 400, "Invalid host header: open the page through the address the explorer printed."
        guarded = scope["path"].startswith("/api/") or scope["method"] not in ("GET", "HEAD")
        if not guarded:
            return None
        if any(site.strip().lower() not in OWN_FETCH_SITES for site in headers.get("sec-fetch-site", [])):
            return 403, "Requests from other sites are refused: use the explorer's own page."
        scheme = scope.get("scheme", "http")
        if any(not same_origin(origin, hosts[0], scheme) for origin in headers.get("origin", [])):
            return 403, "Requests from other origins are refused: use the explorer's own page."
        return None
