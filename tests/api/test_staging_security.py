"""What a tenant's training data can make the worker do (issue #27, findings 3, 5, 6, 9 and 14): image URLs
reach only public hosts (a listener on 127.0.0.1 is never contacted, directly or through a redirect), a slow
image server cannot hold the worker, a cancel stops staging at once, decompression bombs and overlong lines
are refused at upload and at staging. A live `vrft serve` whose worker stages jobs; no job here reaches the
trainer."""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlmodel import select

from api.storage import LocalStorage
from api.tables import File, Job
from api.validation import DatasetLimits, LineTooLong, iter_lines
from media import AddressPolicy
from tests.conftest import make_settings
from tests.helpers import LiveServer, image_data_url, jsonl
from tests.netfixtures import HTTPDouble, Tripwire, bomb_png, drip, png, redirect, send

GRADER = {
    "type": "string_check",
    "name": "c",
    "input": "{{sample.output_text}}",
    "reference": "{{item.solution}}",
    "operation": "eq",
}
ENV = {
    "VRFT_WORKER_POLL_SECONDS": "0.2", "VRFT_SERVING_PREWARM": "false",
    "VRFT_JOB_LEASE_SECONDS": "3",  # staging must renew it: a download below outlasts it
    "VRFT_IMAGE_FETCH_TIMEOUT_SECONDS": "5",
    "VRFT_IMAGE_URL_ALLOWLIST": '["localhost"]',  # a trusted image host name; 127.0.0.1 itself stays refused
    "VRFT_MAX_IMAGE_URLS_PER_FILE": "3", "VRFT_MAX_IMAGE_BYTES": "200000", "VRFT_MAX_IMAGES_PER_ROW": "2",
    "VRFT_MAX_IMAGE_PIXELS": "1000000",
}


class Stack:
    def __init__(self, server: LiveServer, images: HTTPDouble, tripwire: Tripwire) -> None:
        self.server, self.images, self.tripwire = server, images, tripwire
        self.http = httpx.Client(
            base_url=server.url + "/v1", headers={"Authorization": f"Bearer {server.env['VRFT_API_KEY']}"}, timeout=30
        )
        self.settings = make_settings({k: v for k, v in server.env.items() if k.startswith("VRFT_")}, server.home)

    def upload(self, rows: list) -> dict:
        r = self.http.post("/files", files={"file": ("train.jsonl", jsonl(rows))}, data={"purpose": "fine-tune"})
        assert r.status_code == 200, r.text
        for _ in range(100):
            f = self.http.get(f"/files/{r.json()['id']}").json()
            if f["status"] != "uploaded":
                return f
            time.sleep(0.1)
        raise AssertionError("the file was never validated")

    def job_on(self, *urls: str) -> str:
        f = self.upload([row(*urls)])
        assert f["status"] == "processed", f
        r = self.http.post("/fine_tuning/jobs", json={"model": "tiny-qwen2-vl", "training_file": f["id"], "method": {
            "type": "reinforcement", "reinforcement": {"grader": GRADER}}})
        assert r.status_code == 200, r.text
        return r.json()["id"]

    def wait(
        self, job_id: str, statuses: tuple[str, ...] = ("failed", "cancelled", "succeeded"), timeout: float = 30
    ) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.http.get(f"/fine_tuning/jobs/{job_id}").json()
            if job["status"] in statuses:
                return job
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} still {job['status']}")

    def job_row(self, job_id: str) -> Job:
        from api.db import session_scope

        with session_scope(self.settings) as s:
            return s.exec(select(Job).where(Job.id == job_id)).one()


def row(*urls: str) -> dict:
    content = [{"type": "text", "text": "Which colour?"}] + [
        {"type": "image_url", "image_url": {"url": u}} for u in urls
    ]
    return {"messages": [{"role": "user", "content": content}], "solution": "red"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("staging-security")
    model = home / "models" / "tiny-qwen2-vl"
    model.mkdir(parents=True)
    (model / "config.json").write_text('{"model_type": "qwen2_vl"}')
    tripwire = Tripwire()
    images = HTTPDouble({"/ok.png": send(png()), "/bomb.png": send(bomb_png()), "/drip": drip(0.25),
                         "/to-tripwire": redirect(f"http://127.0.0.1:{tripwire.port}/x.png")})
    server = LiveServer({**ENV, "VRFT_API_KEY": "sk-stage-" + secrets.token_hex(6)}, home).start()
    stack = Stack(server, images, tripwire)
    yield stack
    stack.http.close()
    server.stop()
    images.close()
    tripwire.close()


def test_image_urls_never_reach_loopback(stack: Stack) -> None:
    """Finding 3: directly, by a trusted host's redirect, or by a name that resolves to loopback."""
    cases = {f"http://127.0.0.1:{stack.tripwire.port}/x.png": "127.0.0.1",
             stack.images.url("/to-tripwire", host="localhost"): "127.0.0.1",
             f"http://0x7f000001:{stack.tripwire.port}/x.png": "0x7f000001"}
    for url, host in cases.items():
        job = stack.wait(stack.job_on(url))
        assert job["status"] == "failed", job
        err = job["error"]
        assert err["code"] == "image_url_not_allowed", err
        assert "line 1: messages[0].content[1].image_url.url" in err["message"] and f"'{host}'" in err["message"]
    assert stack.tripwire.connections == 0
    assert stack.images.hits.count("/to-tripwire") == 1


def test_download_errors_do_not_scan_the_network(stack: Stack) -> None:
    """A closed port on a trusted host gives the same words as any broken server, not the OS's."""
    job = stack.wait(stack.job_on("http://localhost:1/x.png"))
    assert job["error"]["code"] == "image_unreachable"
    assert "could not be reached" in job["error"]["message"]
    assert not any(w in job["error"]["message"].lower() for w in ("refused", "errno", "[Errno"))


def test_a_dripping_image_server_is_cut_and_the_lease_renewed(stack: Stack) -> None:
    """Finding 5: one byte every 0.25 s never trips a per-read timeout; the per-image deadline (5 s) does, and
    the 3 s lease is renewed meanwhile, so no other worker takes the job over."""
    job_id = stack.job_on(stack.images.url("/drip", host="localhost"))
    leases = []
    while (job := stack.http.get(f"/fine_tuning/jobs/{job_id}").json())["status"] not in ("failed", "succeeded"):
        leases.append((time.time(), stack.job_row(job_id).lease_expires_at))
        time.sleep(0.3)
    assert job["error"]["code"] == "image_timeout" and "5 s" in job["error"]["message"], job["error"]
    staged = [(t, lease) for t, lease in leases if lease is not None]
    assert staged and staged[-1][0] - staged[0][0] > 3.5  # the download outlasted one lease...
    assert all(lease > t for t, lease in staged)  # ...which never ran out


def test_cancel_stops_staging_at_once(stack: Stack) -> None:
    before = stack.images.hits.count("/drip")
    job_id = stack.job_on(stack.images.url("/drip", host="localhost"))
    deadline = time.monotonic() + 20
    while stack.images.hits.count("/drip") == before and time.monotonic() < deadline:  # staging has begun
        time.sleep(0.05)
    stack.images.closed_early.clear()
    cancelled_at = time.monotonic()
    assert stack.http.post(f"/fine_tuning/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    while stack.job_row(job_id).claimed_by is not None:
        assert time.monotonic() - cancelled_at < 3.0, "the worker kept staging a cancelled job"
        time.sleep(0.05)
    assert stack.images.closed_early.wait(2.0)  # the download was dropped, not left to its deadline


def test_decompression_bombs_are_refused_at_upload_and_at_staging(stack: Stack) -> None:
    """Finding 6: 13,000 x 13,000 pixels in 20 KB, as a data URL (refused at upload) or a URL (at staging)."""
    bomb = "data:image/png;base64," + base64.b64encode(bomb_png()).decode()
    f = stack.upload([row(image_data_url()), row(bomb)])
    assert f["status"] == "error"
    assert (
        "line 2: messages[0].content[1].image_url.url: "
        "the image has 13000 x 13000 pixels, more than the 1,000,000 allowed"
        in f["status_details"]
    )
    job = stack.wait(stack.job_on(stack.images.url("/bomb.png", host="localhost")))
    assert job["error"]["code"] == "invalid_image" and "13000 x 13000 pixels" in job["error"]["message"], job["error"]


def test_image_urls_per_file_are_capped(stack: Stack) -> None:
    url = stack.images.url("/ok.png", host="localhost")
    f = stack.upload([row(url, url), row(url), row(url)])
    assert (
        f["status"] == "error" and "line 3: the file has more than the 3 image URLs allowed" in f["status_details"]
    ), f


def test_an_overlong_line_is_refused(stack: Stack) -> None:
    """Finding 9: no valid row is longer than its images as data URLs plus 1 MiB; a longer line is refused
    where it passes that length, not read whole."""
    limits = DatasetLimits.of(stack.settings)
    f = stack.upload(
        [row(image_data_url()), {"messages": [{"role": "user", "content": "x" * (limits.max_line_bytes + 10)}]}]
    )
    assert (
        f["status"] == "error"
        and f"line 2: the line is longer than the {limits.max_line_bytes} bytes" in f["status_details"]
    ), f


def test_lines_are_split_in_linear_time() -> None:
    """Finding 9: a file of one long line cost time quadratic in its size (0.5, 1.8, 7.6 s for 32, 64, 128 MB).
    Eight times the bytes must cost about eight times the time, not sixty-four."""
    def seconds(megabytes: int) -> float:
        chunks = [b"x" * 65536] * (megabytes * 16) + [b"\nnext"]
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            lines = list(iter_lines(chunks, max_line_bytes=2**30))
            best = min(best, time.perf_counter() - start)
        assert [len(x) for x in lines] == [megabytes * 2**20, 4]
        return best

    small, large = seconds(4), seconds(32)
    assert large < 20 * small + 0.05, (small, large)
    with pytest.raises(LineTooLong):
        list(iter_lines([b"x" * 100] * 3, max_line_bytes=250))
    assert list(iter_lines([b"a\nb", b"c\n", b"\nd"], max_line_bytes=10)) == [b"a", b"bc", b"", b"d"]


def test_staged_images_are_named_by_their_format(tmp_path: Path) -> None:
    """Finding 14: a URL ending in a 300-character extension crashed staging (ENAMETOOLONG)."""
    from api.staging import Stager

    images = HTTPDouble({"*": send(png())})
    try:
        storage = LocalStorage(tmp_path / "storage")
        src = tmp_path / "src.jsonl"
        src.write_bytes(jsonl([row(images.url("/picture." + "x" * 300)), row(images.url("/a.png?size=large"))]))
        storage.put_file("files/p/f", src)
        limits = DatasetLimits(
            max_rows=10, max_image_bytes=10_000, max_images_per_row=2, max_image_pixels=10_000, max_image_urls=5
        )
        stager = Stager(
            storage, limits, AddressPolicy(("127.0.0.0/8",)), image_timeout_s=5, deadline=time.monotonic() + 30
        )
        staged = stager.stage(File(id="file-x", storage_key="files/p/f"), tmp_path / "job" / "train.jsonl")
        urls = [
            json.loads(line)["messages"][0]["content"][1]["image_url"]["url"]
            for line in staged.read_text().splitlines()
        ]
        assert urls[0] == urls[1] and urls[0].startswith("file://") and urls[0].endswith(".png")
        assert len(list((tmp_path / "job" / "images").iterdir())) == 1
    finally:
        images.close()
