"""Malformed requests and files: each gets the right status, the OpenAI error shape, a message naming the
field or the line, and leaves everything already stored as it was."""

from __future__ import annotations

import base64
import io
import json
import os
import time
from collections.abc import Callable

import httpx
import pytest
from PIL import Image

from tests.helpers import MULTI_GRADER, assert_openai_error, image_data_url, jsonl, rl_row, sft_row


def snapshot(dep) -> dict:  # noqa: ANN001
    out = {}
    for who, key in (("a", dep.key), ("b", dep.other_key)):
        with dep.http(key) as h:
            out[who] = (
                [(f["id"], f["status"]) for f in h.get("/files").json()["data"]],
                [(j["id"], j["status"]) for j in h.get("/fine_tuning/jobs", params={"limit": 1000}).json()["data"]],
            )
    return out


def upload(h: httpx.Client, content: bytes, purpose: str = "fine-tune", name: str = "data.jsonl") -> dict:
    r = h.post("/files", files={"file": (name, content)}, data={"purpose": purpose})
    assert r.status_code == 200, r.text
    return r.json()


def wait_validated(h: httpx.Client, file_id: str) -> dict:
    for _ in range(1200):
        f = h.get(f"/files/{file_id}").json()
        if f["status"] != "uploaded":
            return f
        time.sleep(0.05)
    raise AssertionError("file never validated")


@pytest.fixture(scope="module")
def files(deployment) -> dict:  # noqa: ANN001
    """Processed files of both kinds in project A, one in project B, one with another purpose."""
    with deployment.http() as h:
        rl = wait_validated(h, upload(h, jsonl([rl_row(0), rl_row(1)]))["id"])
        sft = wait_validated(h, upload(h, jsonl([sft_row(0)]))["id"])
        other_purpose = upload(h, b"hello", purpose="assistants")
    with deployment.http(deployment.other_key) as h:
        foreign = wait_validated(h, upload(h, jsonl([rl_row(0)]))["id"])
    assert rl["status"] == sft["status"] == foreign["status"] == "processed"
    return {"rl": rl["id"], "sft": sft["id"], "assistants": other_purpose["id"], "foreign": foreign["id"]}


def boxes(**body) -> dict:
    """A body for POST /files/{id}/boxes: an iou grader on line 1, with `body`'s fields in place."""
    return {"grader": {"type": "iou", "name": "box"}, "rows": [{"line": 1, "sample": "[1, 2, 3, 4]"}], **body}


def rft(grader: dict | None = None, **hp) -> dict:
    body = {"type": "reinforcement", "reinforcement": {"grader": grader or MULTI_GRADER}}
    if hp:
        body["reinforcement"]["hyperparameters"] = hp
    return body


def rft_rf(response_format: dict) -> dict:
    body = rft()
    body["reinforcement"]["response_format"] = response_format
    return body


def json_schema(schema, name: str = "answer") -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "strict": True, "schema": schema}}


def job(files: dict, **over) -> dict:
    body = {"model": "tiny-qwen2-vl", "training_file": files["rl"], "method": rft()}
    body.update(over)
    return {k: v for k, v in body.items() if v is not None}


# (id, request builder -> (method, path, kwargs), status, param, message fragment)
Case = tuple[str, Callable[[dict], tuple[str, str, dict]], int, str | None, str]
CASES: list[Case] = [
    (
        "upload-no-purpose",
        lambda f: ("POST", "/files", {"files": {"file": ("a.jsonl", b"{}")}}),
        400,
        "purpose",
        "purpose",
    ),
    (
        "upload-unknown-purpose",
        lambda f: ("POST", "/files", {"files": {"file": ("a.jsonl", b"{}")}, "data": {"purpose": "cats"}}),
        400,
        "purpose",
        "'cats'",
    ),
    ("upload-no-file", lambda f: ("POST", "/files", {"data": {"purpose": "fine-tune"}}), 400, "file", "file"),
    (
        "upload-not-multipart",
        lambda f: ("POST", "/files", {"json": {"purpose": "fine-tune"}}),
        400,
        "file",
        "multipart",
    ),
    (
        "upload-empty-file",
        lambda f: ("POST", "/files", {"files": {"file": ("a.jsonl", b"")}, "data": {"purpose": "fine-tune"}}),
        400,
        "file",
        "empty",
    ),
    (
        "upload-too-large",
        lambda f: (
            "POST",
            "/files",
            {"files": {"file": ("a.jsonl", b"x" * (1024 * 1024 + 10))}, "data": {"purpose": "fine-tune"}},
        ),
        413,
        "file",
        "larger than",
    ),
    (
        "upload-bad-expiry",
        lambda f: (
            "POST",
            "/files",
            {
                "files": {"file": ("a.jsonl", b"{}")},
                "data": {"purpose": "assistants", "expires_after[anchor]": "created_at", "expires_after[seconds]": "5"},
            },
        ),
        400,
        "expires_after.seconds",
        "3600",
    ),
    ("file-unknown", lambda f: ("GET", "/files/file-nope", {}), 404, None, "file-nope"),
    ("file-foreign", lambda f: ("GET", f"/files/{f['foreign']}", {}), 404, None, "no file found"),
    ("file-foreign-content", lambda f: ("GET", f"/files/{f['foreign']}/content", {}), 404, None, "no file"),
    ("file-foreign-delete", lambda f: ("DELETE", f"/files/{f['foreign']}", {}), 404, None, "no file"),
    ("boxes-foreign", lambda f: ("POST", f"/files/{f['foreign']}/boxes", {"json": boxes()}), 404, None, "no file"),
    ("boxes-no-rows", lambda f: ("POST", f"/files/{f['rl']}/boxes", {"json": boxes(rows=[])}), 400, "rows",
     "at least 1"),
    ("boxes-line-zero", lambda f: ("POST", f"/files/{f['rl']}/boxes", {"json": boxes(rows=[{"line": 0}])}), 400,
     "rows[0].line", "greater than or equal to 1"),
    ("boxes-past-the-end",
     lambda f: ("POST", f"/files/{f['rl']}/boxes", {"json": boxes(rows=[{"line": 1}, {"line": 3}])}), 400,
     "rows[1].line", "past the end"),
    ("boxes-not-a-row", lambda f: ("POST", f"/files/{f['assistants']}/boxes", {"json": boxes()}), 400, "rows[0].line",
     "not a JSON object"),
    ("boxes-bad-grader", lambda f: ("POST", f"/files/{f['rl']}/boxes",
                                    {"json": boxes(grader={"type": "iou", "name": "b", "mode": "sideways"})}), 400,
     "grader.mode", "mode"),
    ("boxes-bad-convention", lambda f: ("POST", f"/files/{f['rl']}/boxes",
                                        {"json": boxes(box_convention={"coordinates": "inches"})}), 400,
     "box_convention.coordinates", "coordinates"),
    ("rows-foreign", lambda f: ("GET", f"/files/{f['foreign']}/rows", {}), 404, None, "no file"),
    ("rows-line-zero", lambda f: ("GET", f"/files/{f['rl']}/rows?line=1&line=0", {}), 400, "line[1]",
     "greater than or equal to 1"),
    ("rows-line-not-a-number", lambda f: ("GET", f"/files/{f['rl']}/rows?line=two", {}), 400, "line[0]", "integer"),
    ("rows-too-many-lines", lambda f: ("GET", f"/files/{f['rl']}/rows?" + "&".join(["line=1"] * 101), {}), 400,
     "line", "at most 100"),
    ("rows-past-the-end", lambda f: ("GET", f"/files/{f['rl']}/rows?line=2&line=3", {}), 400, "line[1]",
     "past the end"),
    ("rows-not-a-row", lambda f: ("GET", f"/files/{f['assistants']}/rows?line=1", {}), 400, "line[0]",
     "not a JSON object"),
    ("rows-not-rows", lambda f: ("GET", f"/files/{f['assistants']}/rows", {}), 400, "after", "not a JSON object"),
    ("rows-limit-zero", lambda f: ("GET", f"/files/{f['rl']}/rows?limit=0", {}), 400, "limit", "greater than"),
    ("rows-limit-too-big", lambda f: ("GET", f"/files/{f['rl']}/rows?limit=101", {}), 400, "limit", "100"),
    ("rows-after-negative", lambda f: ("GET", f"/files/{f['rl']}/rows?after=-1", {}), 400, "after", "greater than"),
    ("files-limit-zero", lambda f: ("GET", "/files?limit=0", {}), 400, "limit", "between 1 and 10000"),
    ("files-bad-order", lambda f: ("GET", "/files?order=sideways", {}), 400, "order", "order"),
    ("files-bad-after", lambda f: ("GET", "/files?after=file-nope", {}), 400, "after", "file-nope"),
    ("job-missing-model", lambda f: ("POST", "/fine_tuning/jobs", {"json": job(f, model=None)}), 400, "model", "model"),
    (
        "job-missing-training-file",
        lambda f: ("POST", "/fine_tuning/jobs", {"json": job(f, training_file=None)}),
        400,
        "training_file",
        "training_file",
    ),
    (
        "job-unknown-model",
        lambda f: ("POST", "/fine_tuning/jobs", {"json": job(f, model="gpt-9")}),
        400,
        "model",
        "gpt-9",
    ),
    (
        "job-foreign-file",
        lambda f: ("POST", "/fine_tuning/jobs", {"json": job(f, training_file=f["foreign"])}),
        400,
        "training_file",
        "no such file",
    ),
    (
        "job-foreign-validation-file",
        lambda f: ("POST", "/fine_tuning/jobs", {"json": job(f, validation_file=f["foreign"])}),
        400,
        "validation_file",
        "no such file",
    ),
    (
        "job-wrong-purpose-file",
        lambda f: ("POST", "/fine_tuning/jobs", {"json": job(f, training_file=f["assistants"])}),
        400,
        "training_file",
        "purpose",
    ),
    (
        "job-rft-on-sft-file",
        lambda f: ("POST", "/fine_tuning/jobs", {"json": job(f, training_file=f["sft"])}),
        400,
        "training_file",
        "must end with the user",
    ),
    (
        "job-sft-on-rft-file",
        lambda f: ("POST", "/fine_tuning/jobs", {"json": job(f, method={"type": "supervised"})}),
        400,
        "training_file",
        "assistant",
    ),
    (
        "job-dpo-on-rft-file",
        lambda f: ("POST", "/fine_tuning/jobs", {"json": job(f, method={"type": "dpo"})}),
        400,
        "training_file",
        "not preference rows",
    ),
    (
        "job-dpo-bad-beta",
        lambda f: ("POST", "/fine_tuning/jobs",
                   {"json": job(f, method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0}}})}),
        400,
        "method.dpo.hyperparameters.beta",
        "beta",
    ),
    (
        "job-bad-method-type",
        lambda f: ("POST", "/fine_tuning/jobs", {"json": job(f, method={"type": "magic"})}),
        400,
        "method.type",
        "method.type",
    ),
    (
        "job-rft-without-grader",
        lambda f: (
            "POST",
            "/fine_tuning/jobs",
            {"json": job(f, method={"type": "reinforcement", "reinforcement": {}})},
        ),
        400,
        "method.reinforcement.grader",
        "grader",
    ),
    (
        "job-rft-without-reinforcement",
        lambda f: ("POST", "/fine_tuning/jobs", {"json": job(f, method={"type": "reinforcement"})}),
        400,
        "method.reinforcement",
        "grader",
    ),
    (
        "job-grader-unknown-type",
        lambda f: ("POST", "/fine_tuning/jobs", {"json": job(f, method=rft({"type": "vibes", "name": "v"}))}),
        400,
        None,
        "grader",
    ),
    (
        "job-grader-bad-operation",
        lambda f: (
            "POST",
            "/fine_tuning/jobs",
            {
                "json": job(
                    f,
                    method=rft(
                        {
                            "type": "string_check",
                            "name": "s",
                            "input": "{{sample.output_text}}",
                            "reference": "x",
                            "operation": "approx",
                        }
                    ),
                )
            },
        ),
        400,
        None,
        "grader",
    ),
    (
        "job-negative-batch-size",
        lambda f: ("POST", "/fine_tuning/jobs", {"json": job(f, method=rft(batch_size=-1))}),
        400,
        "method.reinforcement.hyperparameters.batch_size",
        ">= 1",
    ),
    (
        "job-zero-lr-multiplier",
        lambda f: ("POST", "/fine_tuning/jobs", {"json": job(f, method=rft(learning_rate_multiplier=0))}),
        400,
        "method.reinforcement.hyperparameters.learning_rate_multiplier",
        "> 0",
    ),
    (
        "job-epochs-not-number",
        lambda f: ("POST", "/fine_tuning/jobs", {"json": job(f, method=rft(n_epochs="many"))}),
        400,
        "method.reinforcement.hyperparameters.n_epochs",
        "'many'",
    ),
    (
        "job-group-of-one",
        lambda f: ("POST", "/fine_tuning/jobs", {"json": job(f, method=rft(num_generations=1))}),
        400,
        "method.reinforcement.hyperparameters.num_generations",
        ">= 2",
    ),
    (
        "job-unknown-hyperparameter",
        lambda f: ("POST", "/fine_tuning/jobs", {"json": job(f, method=rft(warp_speed=9))}),
        400,
        "method.reinforcement.hyperparameters.warp_speed",
        "Unrecognized",
    ),
    (
        "job-bad-reasoning-effort",
        lambda f: ("POST", "/fine_tuning/jobs", {"json": job(f, method=rft(reasoning_effort="extreme"))}),
        400,
        "method.reinforcement.hyperparameters.reasoning_effort",
        "reasoning_effort",
    ),
    (
        "job-response-format-unknown-type",
        lambda f: ("POST", "/fine_tuning/jobs", {"json": job(f, method=rft_rf({"type": "xml"}))}),
        400,
        "method.reinforcement.response_format.type",
        "'xml'",
    ),
    (
        "job-response-format-no-json-schema",
        lambda f: ("POST", "/fine_tuning/jobs", {"json": job(f, method=rft_rf({"type": "json_schema"}))}),
        400,
        "method.reinforcement.response_format.json_schema",
        "name",
    ),
    (
        "job-response-format-bad-name",
        lambda f: (
            "POST",
            "/fine_tuning/jobs",
            {"json": job(f, method=rft_rf(json_schema({"type": "object"}, name="a b")))},
        ),
        400,
        "method.reinforcement.response_format.json_schema.name",
        "1-64",
    ),
    (
        "job-response-format-no-schema",
        lambda f: ("POST", "/fine_tuning/jobs", {"json": job(f, method=rft_rf(json_schema(None)))}),
        400,
        "method.reinforcement.response_format.json_schema.schema",
        "JSON Schema",
    ),
    (
        "job-response-format-invalid-schema",
        lambda f: (
            "POST",
            "/fine_tuning/jobs",
            {"json": job(f, method=rft_rf(json_schema({"type": "object", "properties": {"box": {"type": "objekt"}}})))},
        ),
        400,
        "method.reinforcement.response_format.json_schema.schema",
        "properties/box/type",
    ),
    (
        "job-legacy-negative-epochs",
        lambda f: (
            "POST",
            "/fine_tuning/jobs",
            {"json": {"model": "tiny-qwen2-vl", "training_file": f["sft"], "hyperparameters": {"n_epochs": -3}}},
        ),
        400,
        "hyperparameters.n_epochs",
        ">= 1",
    ),
    (
        "job-legacy-and-method",
        lambda f: ("POST", "/fine_tuning/jobs", {"json": job(f, hyperparameters={"n_epochs": 2})}),
        400,
        "hyperparameters",
        "not both",
    ),
    (
        "job-suffix-too-long",
        lambda f: ("POST", "/fine_tuning/jobs", {"json": job(f, suffix="s" * 65)}),
        400,
        "suffix",
        "64",
    ),
    (
        "job-suffix-colon",
        lambda f: ("POST", "/fine_tuning/jobs", {"json": job(f, suffix="a:b")}),
        400,
        "suffix",
        "letters",
    ),
    (
        "job-17-metadata-keys",
        lambda f: ("POST", "/fine_tuning/jobs", {"json": job(f, metadata={f"k{i}": "v" for i in range(17)})}),
        400,
        "metadata",
        "16",
    ),
    (
        "job-metadata-long-value",
        lambda f: ("POST", "/fine_tuning/jobs", {"json": job(f, metadata={"k": "v" * 513})}),
        400,
        "metadata",
        "512",
    ),
    (
        "job-metadata-not-string",
        lambda f: ("POST", "/fine_tuning/jobs", {"json": job(f, metadata={"k": 1})}),
        400,
        "metadata.k",
        "string",
    ),
    ("job-negative-seed", lambda f: ("POST", "/fine_tuning/jobs", {"json": job(f, seed=-1)}), 400, "seed", ">= 0"),
    (
        "job-unknown-argument",
        lambda f: ("POST", "/fine_tuning/jobs", {"json": job(f, temperature=2)}),
        400,
        "temperature",
        "Unrecognized",
    ),
    (
        "job-bad-integration",
        lambda f: ("POST", "/fine_tuning/jobs", {"json": job(f, integrations=[{"type": "mlflow"}])}),
        400,
        "integrations[0].type",
        "integrations",
    ),
    (
        "job-invalid-json",
        lambda f: (
            "POST",
            "/fine_tuning/jobs",
            {"content": b'{"model": ', "headers": {"content-type": "application/json"}},
        ),
        400,
        None,
        "JSON",
    ),
    ("job-unknown", lambda f: ("GET", "/fine_tuning/jobs/ftjob-nope", {}), 404, None, "ftjob-nope"),
    ("job-cancel-unknown", lambda f: ("POST", "/fine_tuning/jobs/ftjob-nope/cancel", {}), 404, None, "ftjob-nope"),
    ("job-events-unknown", lambda f: ("GET", "/fine_tuning/jobs/ftjob-nope/events", {}), 404, None, "ftjob-nope"),
    ("job-rollouts-unknown", lambda f: ("GET", "/fine_tuning/jobs/ftjob-nope/rollouts", {}), 404, None, "ftjob-nope"),
    ("rollouts-unknown-split", lambda f: ("GET", "/fine_tuning/jobs/ftjob-nope/rollouts?split=test", {}), 400,
     "split", "'train' or 'validation'"),
    ("rollouts-bad-step", lambda f: ("GET", "/fine_tuning/jobs/ftjob-nope/rollouts?step=-1", {}), 400, "step",
     "greater than or equal to 0"),
    ("rollouts-bad-reward", lambda f: ("GET", "/fine_tuning/jobs/ftjob-nope/rollouts?max_reward=top", {}), 400,
     "max_reward", "number"),
    ("jobs-limit-huge", lambda f: ("GET", "/fine_tuning/jobs?limit=100000", {}), 400, "limit", "between"),
    (
        "permissions-unknown-checkpoint",
        lambda f: (
            "POST",
            "/fine_tuning/checkpoints/ft:x:y:z:w:ckpt-step-1/permissions",
            {"json": {"project_ids": ["proj_x"]}},
        ),
        404,
        None,
        "checkpoint",
    ),
    ("model-unknown", lambda f: ("GET", "/models/gpt-9", {}), 404, "model", "gpt-9"),
    ("unknown-route", lambda f: ("GET", "/fine_tuning/nothing/here", {}), 404, None, "Unknown request URL"),
    ("wrong-method", lambda f: ("PUT", "/files", {}), 405, None, "not allowed"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_request(deployment, files, case: Case) -> None:  # noqa: ANN001
    _, build, status, param, fragment = case
    method, path, kwargs = build(files)
    before = snapshot(deployment)
    with deployment.http() as h:
        r = h.request(method, path, **kwargs)
    assert_openai_error(r, status, param=param, contains=fragment)
    if r.status_code < 500:
        assert r.headers.get("x-should-retry") == "false"
    assert snapshot(deployment) == before
    assert not list((deployment.server.home / "tmp").glob("upload-*")), "a refused upload left a temporary file"


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("PUT", "/files", "GET, POST"),
    ("PUT", "/files/file-x", "DELETE, GET"),  # two routes share the path: both methods named
    ("GET", "/fine_tuning/jobs/ftjob-x/cancel", "POST"),
])
def test_method_not_allowed_names_the_allowed_ones(deployment, method: str, path: str, allow: str) -> None:  # noqa: ANN001
    with deployment.http() as h:
        r = h.request(method, path)
    assert_openai_error(r, 405, contains="not allowed")
    assert r.headers["allow"] == allow


def test_auth_errors(deployment) -> None:  # noqa: ANN001
    assert_openai_error(httpx.get(deployment.base_url + "/files"), 401, contains="API key")
    assert_openai_error(
        httpx.get(deployment.base_url + "/files", headers={"Authorization": "Bearer sk-wrong"}),
        401,
        contains="Incorrect API key",
    )
    assert_openai_error(httpx.get(deployment.base_url + "/files", headers={"Authorization": "Basic abc"}), 401)


def _noise_png(side: int) -> str:
    img = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _with_image(url: str, n: int = 1, role: str = "user") -> dict:
    parts = [{"type": "image_url", "image_url": {"url": url}} for _ in range(n)]
    msgs = [{"role": role, "content": [{"type": "text", "text": "look"}, *parts]}]
    if role != "user":
        msgs.append({"role": "user", "content": "and?"})
    return {"messages": msgs}


BAD_FILES: list[tuple[str, Callable[[], bytes], str]] = [
    ("broken-json-line", lambda: jsonl([rl_row(0), '{"messages": [', rl_row(1)]), "line 2: not valid JSON"),
    ("line-not-object", lambda: jsonl(["[1, 2]"]), "line 1: each line must be a JSON object"),
    ("missing-messages", lambda: jsonl([rl_row(0), {"prompt": "hi"}]), "line 2: missing required key 'messages'"),
    ("empty-messages", lambda: jsonl([{"messages": []}]), "line 1: 'messages' must be a non-empty list"),
    (
        "bad-role",
        lambda: jsonl([{"messages": [{"role": "robot", "content": "x"}]}]),
        "line 1: messages[0].role must be one of",
    ),
    (
        "last-message-system",
        lambda: jsonl([{"messages": [{"role": "user", "content": "x"}, {"role": "system", "content": "y"}]}]),
        "line 1: the last message must be from the user",
    ),
    (
        "bad-base64-image",
        lambda: jsonl([_with_image("data:image/png;base64,@@notbase64@@")]),
        "line 1: messages[0].content[1].image_url.url: invalid base64",
    ),
    (
        "undecodable-image",
        lambda: jsonl([_with_image("data:image/png;base64," + base64.b64encode(b"not an image at all").decode())]),
        "could not be decoded",
    ),
    ("oversize-image", lambda: jsonl([_with_image(_noise_png(300))]), "larger than"),
    ("eleven-images", lambda: jsonl([_with_image(image_data_url(), n=11)]), "at most 10 images"),
    (
        "image-in-assistant-message",
        lambda: jsonl([_with_image(image_data_url(), role="assistant")]),
        "only allowed in user messages",
    ),
    ("ftp-image-url", lambda: jsonl([_with_image("ftp://example.com/a.png")]), "base64 data URL"),
    (
        "bad-part-type",
        lambda: jsonl([{"messages": [{"role": "user", "content": [{"type": "audio", "audio": "x"}]}]}]),
        "content[0].type must be 'text' or 'image_url'",
    ),
    ("tools-not-list", lambda: jsonl([{**rl_row(0), "tools": {"a": 1}}]), "'tools' must be a list"),
    ("too-many-rows", lambda: jsonl([sft_row(i) for i in range(51)]), "more than the 50 rows"),
    ("not-utf8", lambda: b'{"messages": "\xff\xfe"}\n', "line 1: not valid JSON"),
]


@pytest.mark.parametrize("case", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_file(deployment, case) -> None:  # noqa: ANN001
    _, build, fragment = case
    with deployment.http() as h:
        before = snapshot(deployment)
        f = upload(h, build())
        done = wait_validated(h, f["id"])
        assert done["status"] == "error", done
        assert fragment in done["status_details"], done["status_details"]
        # A job on it is refused, naming the file and what is wrong with it.
        r = h.post("/fine_tuning/jobs", json={"model": "tiny-qwen2-vl", "training_file": f["id"]})
        assert_openai_error(r, 400, param="training_file", contains="failed validation")
        after = snapshot(deployment)
        after["a"] = ([x for x in after["a"][0] if x[0] != f["id"]], after["a"][1])
        assert after == before
        assert h.delete(f"/files/{f['id']}").json()["deleted"] is True


def test_status_details_lists_first_bad_lines(deployment) -> None:  # noqa: ANN001
    rows = [rl_row(0)] + ["{oops"] * 14 + [rl_row(1)]
    with deployment.http() as h:
        done = wait_validated(h, upload(h, jsonl(rows))["id"])
    assert done["status"] == "error"
    details = done["status_details"]
    assert details.startswith("14 invalid line(s): line 2: not valid JSON")
    assert "line 11:" in details and "line 12:" not in details and "4 more lines with errors not shown" in details
    assert json.dumps(done)  # plain JSON on the wire
