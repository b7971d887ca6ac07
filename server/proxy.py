"""The URLs clients see for this server's resources, also behind a reverse proxy.

Without ``behind_proxy`` a URL is built from the request as aiotusd received it: its
scheme (``https`` with ``tls_cert``) and the host the client addressed: the authority
of an absolute-form request target (``POST http://host:port/files/``), which RFC 9112
section 3.2.2 puts before ``Host``; else ``Host``; else (HTTP/1.0 has no ``Host``) the
address and port of the socket the request came in on. Forwarded headers are then
ignored, so that no client can point a ``Location`` elsewhere.

With ``behind_proxy`` the proxy in front says what the client addressed, in either

- ``X-Forwarded-Proto``, ``X-Forwarded-Host`` and ``X-Forwarded-Port``, read when the
  request has ``X-Forwarded-Proto`` or ``X-Forwarded-Host``; or else
- RFC 7239 ``Forwarded: proto=https;host=example.com``;

and the path prefix under which the proxy mounts aiotusd, in ``X-Forwarded-Prefix``
(``/uploads`` turns ``/files/{id}`` into ``/uploads/files/{id}``). Nearly every proxy
sets (and overwrites) ``X-Forwarded-*`` but passes a client's ``Forwarded`` through, so
that family goes first: behind such a proxy a client cannot smuggle a ``Forwarded`` in.
A proxy that sets ``Forwarded`` must remove clients' ``X-Forwarded-*``; every proxy must
set or remove ``X-Forwarded-Prefix`` (and ``X-Forwarded-Port``, with ``X-Forwarded-*``).

Of a list of values (one per proxy hop) the last is used: the one the proxy next to
aiotusd added, not one a client made up. So it is for the client's address
(:func:`client_address`), which becomes ``request.remote`` for everything that reads it:
hooks, the per-client limits. With ``trusted_proxies`` the headers are
believed only from peers in those networks, and a ``Forwarded`` chain is followed back
past hops whose ``for=`` is trusted too. Malformed values are ignored.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from aiohttp import web
from multidict import CIMultiDictProxy

from .errors import BadRequest
from .protocol import is_host

if TYPE_CHECKING:
    from .config import Settings
    from .config_values import Network


# A path segment (RFC 3986 ``pchar``), percent-encoding included.
_SEGMENT_RE = re.compile(r"(?:[A-Za-z0-9._~!$&'()*+,;=:@-]|%[0-9A-Fa-f]{2})+")
_PORT_RE = re.compile(r"[0-9]{1,5}")
_DEFAULT_PORTS = {"http": "80", "https": "443"}


@dataclass(frozen=True)
class ProxyPolicy:
    """Whether, and from whom, forwarded headers are believed."""

    enabled: bool = False
    networks: tuple[Network, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> ProxyPolicy:
        return cls(settings.proxy.behind_proxy, settings.proxy.trusted_proxies)

    def trusts(self, address: str | None) -> bool:
        """Whether a peer at ``address`` (an IP, maybe with a port) may forward."""
        if not self.enabled:
            return False
        if not self.networks:
            return True
        ip = ip_address_of(address)
        return ip is not None and any(ip in net for net in self.networks)


PROXY = web.AppKey("aiotusd.proxy", ProxyPolicy)


@dataclass(frozen=True)
class External:
    """What the client addressed: ``{scheme}://{host}{prefix}{path}``."""

    scheme: str
    host: str
    prefix: str


_EXTERNAL = web.RequestKey("aiotusd.external", External)
PEER = web.RequestKey("aiotusd.peer", str)
"""The address of the peer, the proxy next to aiotusd, once ``request.remote`` is the
client's (see :func:`server.connections.client_address_middleware`)."""


def external_url(request: web.Request, path: str) -> str:
    """The absolute URL of ``path`` on this server, as the client addressed it."""
    external = _external(request)
    return f"{external.scheme}://{external.host}{external.prefix}{path}"


def external_path(request: web.Request, path: str) -> str:
    """``path`` as the client knows it: below the proxy's path prefix, if any."""
    return _external(request).prefix + path


def upload_location(request: web.Request, settings: Settings, upload_id: str) -> str:
    """The URL of an upload as ``Location`` gives it (tus and the IETF draft alike):
    absolute unless ``relative_location``."""
    path = settings.server.base_path + upload_id
    relative = settings.server.relative_location
    return (external_path if relative else external_url)(request, path)


def base_paths(request: web.Request, base_path: str) -> tuple[str, ...]:
    """The paths under which a client may name this server's uploads in a request."""
    prefixed = external_path(request, base_path)
    return (base_path,) if prefixed == base_path else (prefixed, base_path)


def _external(request: web.Request) -> External:
    external = request.get(_EXTERNAL)
    if external is None:
        external = _from_request(request)
        request[_EXTERNAL] = external
    return external


def _from_request(request: web.Request) -> External:
    scheme, host, prefix = request.scheme, _addressed_host(request), ""
    policy = request.app.get(PROXY)
    if policy is not None and policy.trusts(request.get(PEER, request.remote)):
        scheme, host, prefix = _forwarded(request, policy, scheme, host)
    host = host.rstrip(":")  # an empty port is the default one (RFC 3986 section 3.2.3)
    if host.endswith(":" + _DEFAULT_PORTS[scheme]):
        host = host.rsplit(":", 1)[0]
    return External(scheme, host, prefix)


def target_authority(request: web.Request) -> str | None:
    """The ``host[:port]`` of an absolute-form request target (``userinfo@`` included, to be
    refused); None for the usual origin-form (``/files/``)."""
    if request.raw_path.startswith("/"):
        return None
    try:
        return urlsplit(request.raw_path).netloc
    except ValueError:  # such as an unclosed "[" (aiohttp's parser refuses most of them)
        return ""


def _addressed_host(request: web.Request) -> str:
    """The first valid one of the request target's authority, ``Host`` and the local address.

    The tus handlers refuse an invalid authority or ``Host`` (400) before any URL is
    built; other pages (the demo) still get a usable URL.
    """
    for host in (target_authority(request), request.headers.get("Host")):
        if host is not None and is_host(host):
            return host
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if not isinstance(sockname, tuple):
        raise BadRequest("a Host header is needed to name this server")
    address, port = sockname[0], sockname[1]
    if ":" in address:  # IPv6, maybe with a zone: RFC 6874 writes its "%" as "%25"
        address = "[" + address.replace("%", "%25") + "]"
    return f"{address}:{port}"


def _forwarded(
    request: web.Request, policy: ProxyPolicy, scheme: str, host: str
) -> tuple[str, str, str]:
    """Scheme, host and path prefix as a trusted proxy says the client addressed them."""
    headers = request.headers
    proto, forwarded_host = _last(headers, "X-Forwarded-Proto"), _last(headers, "X-Forwarded-Host")
    if proto or forwarded_host:
        port = _last(headers, "X-Forwarded-Port")
    else:
        element = _forwarded_element(request.forwarded, policy)
        proto, forwarded_host, port = element.get("proto", ""), element.get("host", ""), ""
    if proto.lower() in _DEFAULT_PORTS:
        scheme = proto.lower()
    if forwarded_host and is_host(forwarded_host):
        host = forwarded_host
    if _PORT_RE.fullmatch(port) and 0 < int(port) < 65536:
        host = _with_port(host, port)
    return scheme, host, _prefix(_last(headers, "X-Forwarded-Prefix"))


def _forwarded_element(
    elements: tuple[Mapping[str, str], ...], policy: ProxyPolicy
) -> Mapping[str, str]:
    """The ``Forwarded`` element that describes the client's request (empty if none).

    Each proxy appends one; the last came from the proxy next to us. Going back,
    an element is believed while the hop after it names a trusted proxy in ``for=``.
    """
    if not elements:
        return {}
    index = len(elements) - 1
    while index > 0 and policy.networks and policy.trusts(elements[index].get("for")):
        index -= 1
    return elements[index]


def _last(headers: CIMultiDictProxy[str], name: str) -> str:
    """The last of the comma-separated values of a header (over all its lines)."""
    values = [value for line in headers.getall(name, ()) for value in line.split(",")]
    return values[-1].strip() if values else ""


def _with_port(host: str, port: str) -> str:
    hostname = host.rsplit(":", 1)[0] if host.rsplit("]", 1)[-1].count(":") else host
    return f"{hostname}:{port}"


def _prefix(value: str) -> str:
    """``/uploads`` from ``uploads``, ``/uploads/`` or ``/uploads``; empty if invalid."""
    segments = [segment for segment in value.split("/") if segment]
    if any(s in (".", "..") or not _SEGMENT_RE.fullmatch(s) for s in segments):
        return ""
    return "".join("/" + segment for segment in segments)


def client_address(request: web.Request) -> str:
    """The address of the client that sent ``request``, as far as it can be known.

    The peer, unless the proxy policy believes its forwarded headers: then the last hop
    of ``X-Forwarded-For`` or, without that header, of ``Forwarded: for=``, the one the
    proxy next to aiotusd added (a client can put anything in front of it, not after).
    With ``trusted_proxies`` the hops are followed back past those that are trusted
    proxies too, as far as the first that is not. Empty when there is no peer address.
    """
    peer = request.remote or ""
    policy = request.app.get(PROXY)
    if policy is None or not policy.trusts(peer):
        return peer
    hops = [
        hop.strip()
        for line in request.headers.getall("X-Forwarded-For", ())
        for hop in line.split(",")
        if hop.strip()
    ]
    if not hops:
        hops = [element["for"] for element in request.forwarded if element.get("for")]
    if not hops:
        return peer
    index = len(hops) - 1
    while index > 0 and policy.networks and policy.trusts(hops[index]):
        index -= 1
    return hops[index]


def ip_address_of(node: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP of a peer address or an RFC 7239 node (``1.2.3.4:80``, ``[::1]:80``, ``::1``)."""
    if not node:
        return None
    if node.startswith("["):
        node = node[1 : node.find("]")]
    elif node.count(":") == 1:
        node = node.split(":", 1)[0]
    try:
        ip = ipaddress.ip_address(node.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip
