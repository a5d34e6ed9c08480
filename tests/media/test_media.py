"""media.fetch and media.images against real sockets on 127.0.0.1: what a tenant's URL may reach, how long a
download may take, and which images are refused before anything decodes them."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterator

import pytest

from media import AddressPolicy, FetchError, ImageRejected, decode_data_url, fetch, inspect_image
from media.fetch import is_public
from tests.netfixtures import HTTPDouble, Tripwire, bomb_png, drip, png, redirect, send

LOOPBACK = AddressPolicy(("127.0.0.0/8",))


@pytest.fixture
def tripwire() -> Iterator[Tripwire]:
    t = Tripwire()
    yield t
    t.close()


@pytest.fixture
def images() -> Iterator[HTTPDouble]:
    d = HTTPDouble({"/ok.png": send(png()), "/drip": drip(0.3), "/big": send(b"\0" * 5000)})
    yield d
    d.close()


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.1.2.3",
        "10.0.0.1",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.100.100.200",
        "0.0.0.0",
        "224.0.0.1",
        "::1",
        "fe80::1",
        "fd00:ec2::254",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "2002:7f00:1::1",
        "64:ff9b::a00:1",
    ],
)
def test_non_public_addresses(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "2130706433", "0x7f000001", "[::1]", "[::ffff:127.0.0.1]",
                                  "127.0.0.1.nip.invalid"])
def test_a_url_that_is_not_public_is_refused_before_any_connection(tripwire: Tripwire, host: str) -> None:
    with pytest.raises(FetchError) as e:
        fetch(f"http://{host}:{tripwire.port}/x.png", policy=AddressPolicy(), max_bytes=1000, timeout_s=5)
    assert e.value.code == "image_url_not_allowed"
    assert "127.0.0.1" not in e.value.message.replace(host.strip("[]"), "")  # the resolved address is never told
    assert tripwire.connections == 0


def test_every_redirect_is_checked(tripwire: Tripwire) -> None:
    hops = HTTPDouble({"/to-loopback": redirect(f"http://127.0.0.1:{tripwire.port}/x.png"),
                       "/relative": redirect("/to-loopback")})
    try:
        allowed = AddressPolicy(("localhost",))  # the redirecting host is trusted; where it points is not
        for path in ("/to-loopback", "/relative"):
            with pytest.raises(FetchError) as e:
                fetch(hops.url(path, host="localhost"), policy=allowed, max_bytes=1000, timeout_s=5)
            assert e.value.code == "image_url_not_allowed"
        assert hops.hits == ["/to-loopback", "/relative", "/to-loopback"]
        assert tripwire.connections == 0
    finally:
        hops.close()


def test_allowlisted_hosts_and_networks_are_fetched(images: HTTPDouble) -> None:
    body = png()
    assert fetch(images.url("/ok.png"), policy=LOOPBACK, max_bytes=10_000, timeout_s=5) == body
    by_name = AddressPolicy(("*.localhost", "localhost"))
    assert fetch(images.url("/ok.png", host="localhost"), policy=by_name, max_bytes=10_000, timeout_s=5) == body
    with pytest.raises(ValueError):
        AddressPolicy(("http://10.0.0.0/8",))


def test_a_dripping_server_is_cut_at_the_deadline(images: HTTPDouble) -> None:
    """One byte every 0.3 s: each read succeeds, so only a deadline over the whole download stops it."""
    start = time.monotonic()
    with pytest.raises(FetchError) as e:
        fetch(images.url("/drip"), policy=LOOPBACK, max_bytes=100_000, timeout_s=1.5)
    assert e.value.code == "image_timeout"
    assert 1.4 < time.monotonic() - start < 3.0


def test_tick_can_stop_a_download(images: HTTPDouble) -> None:
    class Stop(Exception):
        pass

    start = time.monotonic()
    calls = []

    def tick() -> None:
        calls.append(time.monotonic())
        if time.monotonic() - start > 1.0:
            raise Stop

    with pytest.raises(Stop):
        fetch(images.url("/drip"), policy=LOOPBACK, max_bytes=100_000, timeout_s=30, tick=tick)
    assert time.monotonic() - start < 3.0 and len(calls) >= 2


def test_size_cap(images: HTTPDouble) -> None:
    with pytest.raises(FetchError) as e:
        fetch(images.url("/big"), policy=LOOPBACK, max_bytes=4000, timeout_s=5)
    assert e.value.code == "invalid_image" and "4000 bytes" in e.value.message


def test_errors_do_not_describe_the_network(images: HTTPDouble) -> None:
    """A closed port and an HTTP error read the same whatever the OS said: no port scanner."""
    with pytest.raises(FetchError) as closed:
        fetch("http://127.0.0.1:1/x.png", policy=LOOPBACK, max_bytes=1000, timeout_s=5)
    assert closed.value.message == "the server could not be reached, or it broke off the connection"
    with pytest.raises(FetchError) as missing:
        fetch(images.url("/nothing-here"), policy=LOOPBACK, max_bytes=1000, timeout_s=5)
    assert missing.value.message == "the server answered HTTP 404"
    for url in ("file:///etc/passwd", "ftp://example.com/x.png", "gopher://127.0.0.1/"):
        with pytest.raises(FetchError) as e:
            fetch(url, policy=LOOPBACK, max_bytes=1000, timeout_s=5)
        assert e.value.code == "invalid_image_url"


def test_images_are_sized_from_their_header() -> None:
    info = inspect_image(png((30, 20)), max_pixels=1000, verify=True)
    assert (info.format, info.width, info.height, info.extension) == ("PNG", 30, 20, "png")
    with pytest.raises(ImageRejected, match="30 x 20 pixels, more than the 599 allowed"):
        inspect_image(png((30, 20)), max_pixels=599)
    with pytest.raises(ImageRejected, match="could not be decoded"):
        inspect_image(b"GIF89a not really", max_pixels=1000)


def test_a_decompression_bomb_is_refused_without_decoding_it() -> None:
    bomb = bomb_png()
    assert len(bomb) < 64_000
    start = time.monotonic()
    with pytest.raises(ImageRejected, match="13000 x 13000 pixels"):
        inspect_image(bomb, max_pixels=40_000_000, verify=True)
    assert time.monotonic() - start < 0.5  # the header only: decoding 169 M pixels takes seconds


def test_data_urls() -> None:
    assert decode_data_url("data:image/png;base64,aGk=") == b"hi"
    assert decode_data_url("https://example.com/a.png") is None
    with pytest.raises(ImageRejected, match="invalid base64"):
        decode_data_url("data:image/png;base64,***")


def test_only_common_formats_are_opened() -> None:
    """PIL opens dozens of formats, each a decoder a tenant's bytes would reach; five are taken."""
    import io

    from PIL import Image

    for fmt in ("TIFF", "ICO", "PPM"):
        buf = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buf, fmt)
        with pytest.raises(ImageRejected, match="PNG, JPEG, WEBP, GIF and BMP are accepted"):
            inspect_image(buf.getvalue(), max_pixels=1000)
    for fmt in ("JPEG", "WEBP", "GIF", "BMP"):
        buf = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buf, fmt)
        assert inspect_image(buf.getvalue(), max_pixels=1000).format == fmt


def test_a_non_ascii_url_is_refused_cleanly() -> None:
    with pytest.raises(FetchError) as e:
        fetch("http://é.example/x.png", policy=LOOPBACK, max_bytes=1000, timeout_s=5)
    assert e.value.code == "invalid_image_url"
