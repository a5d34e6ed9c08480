"""Real vLLM behind the API: the tiny base model and a fine-tuned checkpoint of it (other weights, stored and
registered as the job runner does) served side by side; the openai SDK sends text and image requests to each,
streamed and not, n=2; greedy tokens equal `transformers.generate` on the same weights in fp32."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from tests.helpers import image_data_url
from tests.serving.support import ThreadServer, link_base, register_fine_tuned, serving_app, tiny_model

MAX_TOKENS = 8
IMAGE = image_data_url("red", (56, 56))


@dataclass
class Served:
    server: ThreadServer
    client: openai.OpenAI
    folders: dict[str, Path]
    """model id -> the folder of its weights"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from api.auth import add_key, get_or_create_project
    from api.db import migrate, session_scope
    from api.settings import Settings

    root = tmp_path_factory.mktemp("tiny")
    home = tmp_path_factory.mktemp("serving-vllm")
    base = link_base(home, tiny_model(root, seed=0))
    tuned = tiny_model(root, seed=1)
    settings = Settings(
        home=home,
        serving_dtype="float32",
        serving_enforce_eager=True,
        serving_single_process=True,
        serving_max_model_len=1024,
        serving_max_num_seqs=4,
        serving_start_wait_seconds=600,
        serving_prewarm=False,
    )
    migrate(settings)
    with session_scope(settings) as s:
        proj = get_or_create_project(s, "proj")
        key, proj_id = add_key(s, proj), proj.id
    _, ft = register_fine_tuned(settings, proj_id, "tiny-qwen2-vl", tuned, checkpoint_step=2)
    ckpt = ft + ":ckpt-step-2"
    server = ThreadServer(serving_app(settings)).start()
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=600)
    # start both engines at once: their start-ups overlap
    warm = [
        threading.Thread(
            target=client.chat.completions.create, kwargs={"model": m, "messages": _text(), "max_tokens": 1}
        )
        for m in ("tiny-qwen2-vl", ckpt)
    ]
    for t in warm:
        t.start()
    for t in warm:
        t.join()
    try:
        yield Served(server, client, {"tiny-qwen2-vl": base, ckpt: tuned})
    finally:
        server.stop()


def _text() -> list[dict]:
    return [{"role": "user", "content": "Which shape is red?"}]


def _image() -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": IMAGE}},
                                         {"type": "text", "text": "Where is the red circle?"}]}]


_HF: dict[Path, tuple] = {}


def hf_greedy(folder: Path, messages: list[dict]) -> list[int]:
    """`transformers.generate` on the same folder, fp32, greedy: the completion's token ids."""
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    if folder not in _HF:
        _HF[folder] = (
            AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval(),
            AutoProcessor.from_pretrained(folder),
        )
    model, processor = _HF[folder]
    images, hf_messages = [], []
    for m in messages:
        if isinstance(m["content"], str):
            hf_messages.append(m)
            continue
        parts = []
        for p in m["content"]:
            if p["type"] == "image_url":
                import base64
                import io

                images.append(
                    Image.open(io.BytesIO(base64.b64decode(p["image_url"]["url"].split(",", 1)[1]))).convert("RGB")
                )
                parts.append({"type": "image"})
            else:
                parts.append(p)
        hf_messages.append({"role": m["role"], "content": parts})
    prompt = processor.apply_chat_template(hf_messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[prompt], images=images or None, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


MODELS = ["tiny-qwen2-vl", "ckpt"]


def _model_id(served: Served, which: str) -> str:
    return which if which == "tiny-qwen2-vl" else next(m for m in served.folders if m.endswith(":ckpt-step-2"))


@pytest.mark.parametrize("which", MODELS)
@pytest.mark.parametrize("kind", ["text", "image"])
def test_greedy_tokens_equal_transformers(served: Served, which: str, kind: str) -> None:
    model = _model_id(served, which)
    messages = _text() if kind == "text" else _image()
    r = served.client.chat.completions.create(model=model, messages=messages, max_tokens=MAX_TOKENS, temperature=0,
                                              extra_body={"return_token_ids": True})
    assert r.model == model and r.object == "chat.completion"
    got = r.choices[0].token_ids
    want = hf_greedy(served.folders[model], messages)
    assert got == want, (got, want)
    assert r.usage.completion_tokens == len(got)
    # streamed, the same text arrives in pieces
    chunks = list(
        served.client.chat.completions.create(
            model=model, messages=messages, max_tokens=MAX_TOKENS, temperature=0, stream=True
        )
    )
    assert all(c.model == model and c.object == "chat.completion.chunk" for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == r.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")


@pytest.mark.parametrize("which", MODELS)
def test_n2_sampled_stream_and_not(served: Served, which: str) -> None:
    model = _model_id(served, which)
    r = served.client.chat.completions.create(
        model=model, messages=_image(), max_tokens=MAX_TOKENS, temperature=1.0, n=2, seed=7
    )
    assert [c.index for c in r.choices] == [0, 1] and all(c.message.content for c in r.choices)
    texts = {0: "", 1: ""}
    finished = set()
    for c in served.client.chat.completions.create(
        model=model, messages=_text(), max_tokens=MAX_TOKENS, temperature=1.0, n=2, seed=7, stream=True
    ):
        for ch in c.choices:
            texts[ch.index] += ch.delta.content or ""
            if ch.finish_reason:
                finished.add(ch.index)
    assert finished == {0, 1} and all(texts.values())


def test_the_two_models_answer_differently_and_completions_work(served: Served) -> None:
    ckpt = _model_id(served, "ckpt")
    outs = [
        served.client.completions.create(model=m, prompt="The red circle is", max_tokens=MAX_TOKENS, temperature=0)
        .choices[0]
        .text
        for m in ("tiny-qwen2-vl", ckpt)
    ]
    assert outs[0] != outs[1]
    engines = [e for e in served.server.manager.engines.values() if e.state == "ready"]
    assert len(engines) == 2 and all(e.in_flight == 0 for e in engines)


def test_models_lists_both(served: Served) -> None:
    ids = {m.id: m for m in served.client.models.list()}
    assert "tiny-qwen2-vl" in ids and ids["tiny-qwen2-vl"].owned_by and ids["tiny-qwen2-vl"].created > 0
    assert any(i.startswith("ft:tiny-qwen2-vl:proj:") for i in ids)
