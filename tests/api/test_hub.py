"""Models named by a Hugging Face Hub id, against a fake hub (tests/hubserver.py: real sockets, the file API
huggingface_hub 2.x speaks): the first use downloads, the second reads the cache; `@revision` pins a commit;
a missing repo, a gated repo without a token and a model the trainer cannot train are 400s naming `model`; a
connection dropped mid-file resumes with a Range request; downloads can be turned off. Then the whole story
through the openai SDK: a job on a hub id downloads it with progress events, trains, and its model answers a
chat with an image."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

import synthetic
from api import hub
from api.errors import APIError
from api.settings import Settings
from tests.helpers import LiveServer, assert_openai_error, image_data_url
from tests.hubserver import FakeHub, folder_files

REPO = "vrft-test/tiny-qwen2-vl"
GATED = "vrft-test/gated-vl"
TEXT_ONLY = "vrft-test/text-only"
BIG = "vrft-test/big"
BIG_FILE = 24 * 1024 * 1024  # > huggingface_hub's 10 MiB download chunk: a drop after one chunk resumes
TOKEN = "hf_test_good_token"


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    from trainer.tiny_model import build_tiny_model

    return folder_files(build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-qwen2-vl", seed=0))


def other_commit(files: dict[str, bytes]) -> dict[str, bytes]:
    """The same model at a later commit: another config.json and other weights (the last weight byte)."""
    out = dict(files)
    config = json.loads(files["config.json"])
    config["vrft_commit"] = "later"
    out["config.json"] = json.dumps(config).encode()
    w = bytearray(files["model.safetensors"])
    w[-1] ^= 0x01
    out["model.safetensors"] = bytes(w)
    return out


@pytest.fixture(scope="module")
def fake_hub(tiny_files: dict[str, bytes]) -> Iterator[FakeHub]:
    h = FakeHub()
    h.add(REPO, tiny_files, refs=("v1",))
    h.add(REPO, other_commit(tiny_files), refs=("main",))
    h.add(GATED, tiny_files, token=TOKEN)
    h.add(TEXT_ONLY, {"config.json": json.dumps({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]})
                      .encode(), "model.safetensors": b"\0" * 64})
    h.add(BIG, {"config.json": tiny_files["config.json"], "model.safetensors": bytes(range(256)) * (BIG_FILE // 256)})
    yield h
    h.close()


def settings_for(home: Path, fake_hub: FakeHub, **kw: object) -> Settings:
    return Settings(home=home, hf_endpoint=fake_hub.url, hf_home=None, hf_token=None, **kw)


def test_first_download_then_the_cache(tmp_path: Path, fake_hub: FakeHub, tiny_files: dict[str, bytes]) -> None:
    st = settings_for(tmp_path, fake_hub)
    pin = hub.check_for_job(st, REPO)  # config.json only
    assert pin["repo"] == REPO and pin["revision"] == "main" and len(pin["sha"]) == 40
    assert [g.path for g in fake_hub.file_gets(REPO) if g.path != "config.json"] == []
    before = fake_hub.body_bytes
    seen: list[tuple[int, int]] = []
    folder = hub.download(st, hub.HubRef(REPO), pin["sha"], on_progress=lambda d, t: seen.append((d, t)))
    assert folder == st.hub_cache_dir / "models--vrft-test--tiny-qwen2-vl" / "snapshots" / pin["sha"]
    total = sum(len(v) for v in other_commit(tiny_files).values())
    assert seen[-1] == (total, total) and all(t == total for _, t in seen)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)  # bytes done only grow
    # every file byte was served once, except the config.json fetched at creation
    assert fake_hub.body_bytes - before == total - len(other_commit(tiny_files)["config.json"])
    gets = len(fake_hub.gets)
    again = hub.download(st, hub.HubRef(REPO), pin["sha"])
    assert again == folder and len(fake_hub.gets) == gets  # cached: no file downloaded the second time
    assert hub.local_folder(st, REPO) == folder and len(fake_hub.gets) == gets
    assert {p.name for p in folder.iterdir()} == set(tiny_files)


def test_revision_pinning(tmp_path: Path, fake_hub: FakeHub, tiny_files: dict[str, bytes]) -> None:
    st = settings_for(tmp_path, fake_hub)
    v1, main = hub.check_for_job(st, REPO + "@v1"), hub.check_for_job(st, REPO)
    assert v1["revision"] == "v1" and v1["sha"] != main["sha"]
    old = hub.download(st, hub.HubRef(REPO, "v1"), v1["sha"])
    new = hub.download(st, hub.HubRef(REPO), main["sha"])
    assert (old / "model.safetensors").read_bytes() == tiny_files["model.safetensors"]
    assert (new / "model.safetensors").read_bytes() != tiny_files["model.safetensors"]
    assert "vrft_commit" not in json.loads((old / "config.json").read_text())
    assert json.loads((new / "config.json").read_text())["vrft_commit"] == "later"
    # main moves on after the job was created: the job still gets the commit it was created on
    files = dict(tiny_files, **{"README.md": b"moved"})
    moved = fake_hub.add(REPO, files, refs=("main",))
    try:
        assert hub.download(st, hub.HubRef(REPO), main["sha"]) == new
        assert hub.check_for_job(st, REPO)["sha"] == moved
    finally:
        fake_hub.repos[REPO].refs["main"] = main["sha"]
    # what the cache serves by name: v1, not main (which names the later commit now, not downloaded here)
    assert set(hub.cached_ids(st)) == {REPO + "@v1"}


def test_missing_repo_and_revision_are_400s_naming_model(tmp_path: Path, fake_hub: FakeHub) -> None:
    st = settings_for(tmp_path, fake_hub)
    with pytest.raises(APIError) as e:
        hub.check_for_job(st, "vrft-test/no-such-model")
    assert e.value.status_code == 400 and e.value.param == "model" and "does not exist" in e.value.message
    with pytest.raises(APIError) as e:
        hub.check_for_job(st, REPO + "@v9")
    assert e.value.param == "model" and "no revision 'v9'" in e.value.message


def test_gated_repo_needs_a_token(tmp_path: Path, fake_hub: FakeHub) -> None:
    with pytest.raises(APIError) as e:
        hub.check_for_job(settings_for(tmp_path, fake_hub), GATED)
    assert e.value.status_code == 400 and e.value.param == "model"
    assert "gated" in e.value.message and "HF_TOKEN" in e.value.message
    st = Settings(home=tmp_path, hf_endpoint=fake_hub.url, hf_home=None, hf_token=TOKEN)
    pin = hub.check_for_job(st, GATED)
    assert (hub.download(st, hub.HubRef(GATED), pin["sha"]) / "model.safetensors").is_file()


def test_a_model_the_trainer_cannot_train_is_a_400_with_the_reason(tmp_path: Path, fake_hub: FakeHub) -> None:
    with pytest.raises(APIError) as e:
        hub.check_for_job(settings_for(tmp_path, fake_hub), TEXT_ONLY)
    assert e.value.status_code == 400 and e.value.param == "model" and e.value.code == "unsupported_model"
    assert "text-only" in e.value.message, e.value.message


def test_an_interrupted_download_resumes_with_a_range_request(tmp_path: Path, fake_hub: FakeHub) -> None:
    st = settings_for(tmp_path, fake_hub)
    pin = hub.check_for_job(st, BIG)
    fake_hub.drop_once(BIG, "model.safetensors")
    before = fake_hub.body_bytes
    folder = hub.download(st, hub.HubRef(BIG), pin["sha"])
    gets = [g for g in fake_hub.file_gets(BIG) if g.path == "model.safetensors"]
    assert [g.status for g in gets] == [200, 206], gets
    first_chunk = 10 * 1024 * 1024  # what reached the disk before the drop (one download chunk)
    assert gets[1].range == f"bytes={first_chunk}-"
    assert (folder / "model.safetensors").read_bytes() == bytes(range(256)) * (BIG_FILE // 256)
    # half the file before the drop, then only what was not on disk yet: less than the file twice
    assert fake_hub.body_bytes - before == BIG_FILE // 2 + (BIG_FILE - first_chunk)


class Stop(Exception):
    pass


def test_a_stopped_download_keeps_its_finished_files(tmp_path: Path, fake_hub: FakeHub) -> None:
    """What a worker that dies (or is cancelled) mid-download leaves: the finished files, which the worker that
    takes the job over does not fetch again."""
    st = settings_for(tmp_path, fake_hub)
    pin = hub.check_for_job(st, REPO + "@v1")

    def stop_in_the_weights(done: int, total: int) -> None:
        if (st.hub_cache_dir / "models--vrft-test--tiny-qwen2-vl" / "snapshots" / pin["sha"] / "chat_template.jinja"
                ).exists() and done > 0:
            raise Stop  # as the runner's heartbeat raises JobStopped: nothing in huggingface_hub catches it

    with pytest.raises(Stop):
        hub.download(st, hub.HubRef(REPO, "v1"), pin["sha"], on_progress=stop_in_the_weights)
    assert hub.cached_snapshot(st, hub.HubRef(REPO, "v1"), pin["sha"]) is None  # not complete: not served
    first = {g.path for g in fake_hub.file_gets(REPO)}
    mark = len(fake_hub.gets)
    hub.download(st, hub.HubRef(REPO, "v1"), pin["sha"])
    again = [g.path for g in fake_hub.gets[mark:]]
    assert "chat_template.jinja" in first and "chat_template.jinja" not in again and again


def test_configured_ids_download_on_first_use_for_chat(tmp_path: Path, fake_hub: FakeHub) -> None:
    st = settings_for(tmp_path, fake_hub, base_models=[REPO + "@v1"])
    assert hub.local_folder(st, REPO) is None  # neither configured nor cached: not served
    folder = hub.local_folder(st, REPO + "@v1")
    assert folder is not None and (folder / "model.safetensors").is_file()
    assert set(hub.cached_ids(st)) == {REPO + "@v1"}
    assert hub.local_folder(st, "tiny-qwen2-vl") is None  # a folder name is not a hub id


def test_downloads_turned_off(tmp_path: Path, fake_hub: FakeHub) -> None:
    off = settings_for(tmp_path, fake_hub, hub_downloads=False)
    with pytest.raises(APIError) as e:
        hub.check_for_job(off, REPO + "@v1")
    assert e.value.param == "model" and "VRFT_HUB_DOWNLOADS=false" in e.value.message
    with pytest.raises(hub.HubUnavailable):
        hub.download(off, hub.HubRef(REPO, "v1"))
    on = settings_for(tmp_path, fake_hub)
    pin = hub.check_for_job(on, REPO + "@v1")
    hub.download(on, hub.HubRef(REPO, "v1"), pin["sha"])
    calls, gets = len(fake_hub.api_calls), len(fake_hub.gets)
    assert hub.check_for_job(off, REPO + "@v1") == pin  # from the cache, without asking the hub
    assert hub.download(off, hub.HubRef(REPO, "v1")).name == pin["sha"]
    assert (len(fake_hub.api_calls), len(fake_hub.gets)) == (calls, gets)


# ---------------------------------------------------------------- through the API


def _wait(client: openai.OpenAI, job_id: str, timeout: float = 600) -> object:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {job.status}")


def test_a_job_on_a_hub_id_downloads_trains_and_its_model_chats(tmp_path: Path, fake_hub: FakeHub) -> None:
    home = tmp_path / "home"
    hf_home = tmp_path / "hf"
    server = LiveServer({
        "VRFT_API_KEY": "sk-hub-test", "VRFT_WORKER_POLL_SECONDS": "0.2", "VRFT_SERVING_PREWARM": "false",
        "VRFT_HUB_PROGRESS_SECONDS": "0", "VRFT_BASE_MODELS": json.dumps([REPO + "@v1"]),
        "HF_ENDPOINT": fake_hub.url, "HF_HOME": str(hf_home), "HF_TOKEN": "",
        "VRFT_SERVING_DTYPE": "float32", "VRFT_SERVING_ENFORCE_EAGER": "true", "VRFT_SERVING_SINGLE_PROCESS": "true",
        "VRFT_SERVING_MAX_MODEL_LEN": "1024", "VRFT_SERVING_MAX_NUM_SEQS": "2",
        "VRFT_SERVING_START_WAIT_SECONDS": "600",
    }, home).start()
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-hub-test", max_retries=0, timeout=600)
        http = httpx.Client(base_url=server.url + "/v1", headers={"Authorization": "Bearer sk-hub-test"}, timeout=60)
        # configured ids are listed before they are downloaded; an id neither configured nor cached is a 404
        listed = {m.id: m.owned_by for m in client.models.list()}
        assert listed.get(REPO + "@v1") == "vrft-test" and REPO not in listed
        assert_openai_error(http.post("/chat/completions", json={"model": REPO, "messages": [
            {"role": "user", "content": "hi"}]}), 404, param="model", contains="VRFT_BASE_MODELS")

        path = tmp_path / "sft.jsonl"
        path.write_bytes(synthetic.to_jsonl(synthetic.generate("classification", 4, seed=4, short=True, sft=True)))
        f = client.files.wait_for_processing(client.files.create(file=path.open("rb"), purpose="fine-tune").id,
                                             poll_interval=0.2, max_wait_seconds=120)
        assert f.status == "processed", f.status_details
        for bad, says in (("vrft-test/no-such-model", "does not exist"), (GATED, "gated"), (TEXT_ONLY, "text-only")):
            r = http.post("/fine_tuning/jobs", json={"model": bad, "training_file": f.id})
            assert_openai_error(r, 400, param="model", contains=says)

        job = client.fine_tuning.jobs.create(model=REPO, training_file=f.id, suffix="hub", method={
            "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 2}}})
        assert job.model == REPO
        job = _wait(client, job.id)
        events = [e for e in client.fine_tuning.jobs.list_events(job.id, limit=100)][::-1]
        messages = [e.message for e in events]
        assert job.status == "succeeded", (job.error, messages)
        sha = fake_hub.repos[REPO].refs["main"]
        assert f"Model {REPO} resolved to commit {sha} on the Hugging Face Hub" in messages
        progress = [e for e in events if e.message.startswith(("Downloading " + REPO, "Downloaded " + REPO))]
        assert len(progress) >= 2 and progress[-1].message.startswith(f"Downloaded {REPO}: ")
        assert " of " in progress[0].message and progress[0].data["total_bytes"] > 0
        assert progress[-1].data["downloaded_bytes"] == progress[-1].data["total_bytes"]
        assert messages.index(progress[-1].message) < messages.index("Fine-tuning job started")
        assert (hf_home / "hub" / "models--vrft-test--tiny-qwen2-vl" / "snapshots" / sha / "config.json").is_file()
        assert job.fine_tuned_model.startswith(f"ft:{REPO}:default:hub:")

        listed = {m.id: m.owned_by for m in client.models.list()}
        assert listed.get(REPO) == "vrft-test" and job.fine_tuned_model in listed  # cached now: callable
        assert client.models.retrieve(REPO).owned_by == "vrft-test"
        reply = client.chat.completions.create(model=job.fine_tuned_model, max_tokens=4, messages=[
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_data_url("red", (56, 56))}},
                                         {"type": "text", "text": "Which colour is the shape?"}]}])
        assert reply.model == job.fine_tuned_model and reply.choices[0].message.content is not None
        assert reply.usage.completion_tokens >= 1
    finally:
        server.stop()
