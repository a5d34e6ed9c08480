"""Downloading a URL a tenant gave, without letting it reach inside the network (server-side request forgery).

Every connection, the first and each redirect's, goes through `_GuardedBackend`: the host name is resolved
once, every address it resolves to must be allowed by the `AddressPolicy` (public, or allowed by the
operator), and the socket connects to an address that was checked, so a DNS answer that changes between the
check and the connection (rebinding) gains nothing. All reads of one download share one absolute deadline,
so a server that drips a byte at a time cannot hold the caller past it (a per-read timeout would never fire).
Error messages say what went wrong without describing the network: no addresses, and no OS errors such as
"connection refused", which would make the service a port scanner.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from urllib.parse import urljoin, urlsplit

import httpcore

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
REDIRECTS = frozenset({301, 302, 303, 307, 308})
TICK_SECONDS = 1.0
"""How often a download that waits calls its `tick`."""
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class FetchError(Exception):
    """A download that failed or was refused; `message` is safe to show the tenant."""

    def __init__(self, message: str, *, code: str = "image_unreachable") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def is_public(ip: IPAddress) -> bool:
    """Routable on the internet: not loopback, private, link-local (the cloud metadata address 169.254.169.254
    is one), shared (100.64.0.0/10), multicast, reserved or unspecified. IPv6 addresses that carry an IPv4
    address (mapped, 6to4, Teredo, NAT64) are judged by that address too.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return is_public(ip.ipv4_mapped)
        carried = [ip.sixtofour, ip.teredo[1] if ip.teredo else None,
                   ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else None]
        if any(v4 is not None and not is_public(v4) for v4 in carried):
            return False
    return ip.is_global and not ip.is_multicast


@dataclass(frozen=True)
class AddressPolicy:
    """Where a download may connect: public addresses, plus what the operator allows."""

    allow: tuple[str, ...] = ()
    """Host names (`images.corp`, `*.corp`) or networks (`10.1.0.0/16`, `fd00::/8`) allowed although not public."""
    _hosts: tuple[str, ...] = field(init=False, repr=False, default=())
    _networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(init=False, repr=False, default=())

    def __post_init__(self) -> None:
        hosts, networks = [], []
        for entry in self.allow:
            entry = entry.strip().lower()
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                if not entry or "/" in entry or ":" in entry:
                    raise ValueError(f"not a host name or a network: {entry!r}") from None
                hosts.append(entry.rstrip("."))
        object.__setattr__(self, "_hosts", tuple(hosts))
        object.__setattr__(self, "_networks", tuple(networks))

    def allows(self, host: str, address: str) -> bool:
        """May a connection to `host` go to `address` (one of the addresses `host` resolved to)?"""
        name = host.lower().rstrip(".")
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in self._hosts):
            return True
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 scope (fe80::1%eth0)
        return is_public(ip) or any(ip in net for net in self._networks)


def _not_allowed(host: str) -> FetchError:
    return FetchError(
        f"the host {host!r} is not a public internet host this service may reach (it does not resolve, "
        "or it resolves to a loopback, private, link-local or metadata address)",
        code="image_url_not_allowed",
    )


class _GuardedBackend(httpcore.NetworkBackend):
    """httpcore's own TCP backend, connecting only to checked addresses, with every wait cut to the deadline
    and `tick` called before each wait."""

    def __init__(self, policy: AddressPolicy, deadline: float, tick: Callable[[], None] | None) -> None:
        self.policy = policy
        self.deadline = deadline
        self.tick = tick

    @cached_property
    def _tcp(self) -> httpcore.SyncBackend:
        return httpcore.SyncBackend()

    def left(self, timeout: float | None, exc: type[Exception]) -> float:
        """The time an operation may wait: its own timeout, cut to what is left before the deadline."""
        if self.tick is not None:
            self.tick()
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise exc("deadline reached")
        return remaining if timeout is None else min(timeout, remaining)

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options=None) -> httpcore.NetworkStream:  # noqa: ANN001  (httpcore's signature)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            raise _not_allowed(host) from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        # every answer must be allowed: a name that resolves to one public and one private address is refused
        if not addresses or not all(self.policy.allows(host, a) for a in addresses):
            raise _not_allowed(host)
        error: Exception = httpcore.ConnectError("no address")
        for address in addresses:
            try:
                stream = self._tcp.connect_tcp(address, port, timeout=self.left(timeout, httpcore.ConnectTimeout),
                                               local_address=local_address, socket_options=socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as e:
                error = e
                continue
            return _DeadlineStream(stream, self)
        raise error

    def connect_unix_socket(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        raise httpcore.ConnectError("unix sockets are not fetched")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, backend: _GuardedBackend) -> None:
        self._inner = inner
        self._backend = backend

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if self._backend.tick is None:
            return self._inner.read(max_bytes, self._backend.left(timeout, httpcore.ReadTimeout))
        while True:  # wait in slices, ticking between them (a socket read that timed out can be tried again)
            wait = self._backend.left(timeout, httpcore.ReadTimeout)
            try:
                return self._inner.read(max_bytes, min(wait, TICK_SECONDS))
            except httpcore.ReadTimeout:
                if wait <= TICK_SECONDS:
                    raise

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._backend.left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        inner = self._inner.start_tls(
            ssl_context, server_hostname, self._backend.left(timeout, httpcore.ConnectTimeout)
        )
        return _DeadlineStream(inner, self._backend)

    def get_extra_info(self, info: str):  # noqa: ANN201
        return self._inner.get_extra_info(info)


def fetch(url: str, *, policy: AddressPolicy, max_bytes: int, timeout_s: float, max_redirects: int = 3,
          tick: Callable[[], None] | None = None) -> bytes:
    """The body of the http(s) `url`: at most `max_bytes`, within `timeout_s` from the first byte sent to the
    last received, through at most `max_redirects` redirects, each checked like the first URL, with no HTTP
    proxy (the address check is about the host). `tick` is called at least once a second while the download
    waits; what it raises stops the download (a cancelled job, say). Raises FetchError."""
    deadline = time.monotonic() + timeout_s
    with httpcore.ConnectionPool(ssl_context=ssl.create_default_context(), retries=0,
                                 network_backend=_GuardedBackend(policy, deadline, tick)) as pool:
        for _ in range(max_redirects + 1):
            try:
                parts = urlsplit(url)
                url.encode("ascii")
            except (ValueError, UnicodeError):
                raise FetchError("the URL is not a valid ASCII URL (percent-encode it, and IDNA-encode its host)",
                                 code="invalid_image_url") from None
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise FetchError("only http:// and https:// URLs with a host can be fetched", code="invalid_image_url")
            try:
                with pool.stream("GET", url, headers=[(b"Accept", b"image/*"), (b"User-Agent", b"vrft")]) as r:
                    if r.status in REDIRECTS:
                        location = _header(r, b"location")
                        if not location:
                            raise FetchError(f"the server answered HTTP {r.status} without a Location")
                        url = urljoin(url, location.decode("latin-1"))
                        continue
                    if r.status >= 400:
                        raise FetchError(f"the server answered HTTP {r.status}")
                    return _read_capped(r, max_bytes)
            except httpcore.TimeoutException:
                raise FetchError(
                    f"the download took longer than the {timeout_s:g} s allowed", code="image_timeout"
                ) from None
            except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol, ssl.SSLError, OSError):
                raise FetchError("the server could not be reached, or it broke off the connection") from None
    raise FetchError(f"more than {max_redirects} redirects")


def _header(r: httpcore.Response, name: bytes) -> bytes | None:
    return next((value for key, value in r.headers if key.lower() == name), None)


def _read_capped(r: httpcore.Response, max_bytes: int) -> bytes:
    declared = _header(r, b"content-length") or b""
    if declared.isdigit() and int(declared) > max_bytes:
        raise FetchError(f"the image is larger than the {max_bytes} bytes allowed", code="invalid_image")
    body = bytearray()
    for chunk in r.iter_stream():
        body += chunk
        if len(body) > max_bytes:
            raise FetchError(f"the image is larger than the {max_bytes} bytes allowed", code="invalid_image")
    return bytes(body)
