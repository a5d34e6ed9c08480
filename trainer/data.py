"""Dataset rows (OpenAI chat JSONL) -> model inputs, for vision-language models and plain causal LMs.

A row is `{"messages": [...], <other keys>}`, or for DPO OpenAI's preference row `{"input": {"messages": [...],
"tools"?: [...]}, "preferred_output": [assistant message], "non_preferred_output": [assistant message]}`.
Message content is a string or a list of parts:
`{"type": "text", "text": ...}` and `{"type": "image_url", "image_url": {"url": ...}}` where the url is a
`file://` path (what the job runner writes after staging), a plain absolute path, or a `data:` URL.

The model's own processor renders the chat template and expands the image placeholders, so the prompt
tokens are exactly those vLLM builds from the same text and images (a test checks this).
"""

from __future__ import annotations

import base64
import io
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import torch


class DataError(ValueError):
    """A row the trainer cannot use; the message names the file, the line and what to fix."""


def read_jsonl(path: str | Path, what: str = "training file") -> tuple[list[dict], list[int]]:
    """The rows of a JSONL file and their line numbers (for messages that point at a line)."""
    rows, lines = [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise DataError(f"{what} line {n}: not valid JSON ({e})") from None
            if not isinstance(row, dict) or not isinstance(row_messages(row), list) or not row_messages(row):
                raise DataError(f"{what} line {n}: a row must be an object with a non-empty `messages` list "
                                "(a preference row: `input.messages`)")
            rows.append(row)
            lines.append(n)
    if not rows:
        raise DataError(f"{what} has no rows")
    return rows, lines


def row_messages(row: dict) -> list | None:
    """The conversation of a row: its `messages`, or a preference row's `input.messages`."""
    if "messages" in row or not isinstance(row.get("input"), dict):
        return row.get("messages")
    return row["input"].get("messages")


def load_image(url: str):
    """A PIL RGB image from a file:// URL, a plain path or a data: URL."""
    from PIL import Image

    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        raw = base64.b64decode(payload) if header.endswith(";base64") else unquote(payload).encode("latin-1")
        img = Image.open(io.BytesIO(raw))
    else:
        path = unquote(urlparse(url).path) if url.startswith("file://") else url
        if not Path(path).is_absolute():
            raise DataError(f"image {url[:80]!r}: expected a file:// URL, an absolute path or a data: URL")
        img = Image.open(path)
    img.load()
    return img.convert("RGB")


def split_content(content: Any, where: str) -> tuple[list[dict], list[str]]:
    """OpenAI content -> (processor-style parts with {"type": "image"} placeholders, image urls)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}], []
    if not isinstance(content, list):
        raise DataError(f"{where}: content must be a string or a list of parts")
    parts, urls = [], []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": str(part.get("text", ""))})
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if not isinstance(url, str) or not url:
                raise DataError(f"{where}: image_url part without a url")
            parts.append({"type": "image"})
            urls.append(url)
        else:
            raise DataError(f"{where}: unsupported content part type {kind!r} (text and image_url only)")
    return parts, urls


def to_template_messages(messages: list[dict], where: str, vision: bool) -> tuple[list[dict], list[str]]:
    """Messages for `apply_chat_template` and the image urls in order of appearance."""
    out, urls = [], []
    for i, m in enumerate(messages):
        role = m.get("role")
        if role not in ("system", "developer", "user", "assistant"):
            raise DataError(f"{where}: message {i} has role {role!r}")
        parts, u = split_content(m.get("content", ""), f"{where}, message {i}")
        if u and not vision:
            raise DataError(f"{where}: has images but the model is a text-only language model")
        urls += u
        role = "system" if role == "developer" else role
        if vision:
            out.append({"role": role, "content": parts})
        else:
            out.append({"role": role, "content": "".join(p["text"] for p in parts)})
    return out, urls


@dataclass
class Prompt:
    """One rollout prompt: the rendered chat text, its images, and the processor's tensors."""

    index: int
    """Row index in its file."""
    row: dict
    text: str
    images: list
    input_ids: list[int]
    mm: dict[str, torch.Tensor] = field(default_factory=dict)
    """Extra model inputs (pixel_values, image_grid_thw, ...), concatenable along dim 0 across prompts."""
    per_token: dict[str, list[int]] = field(default_factory=dict)
    """Extra inputs with one value per prompt token (e.g. mm_token_type_ids), padded like input_ids (0)."""


class ChatData:
    """Rows of one file plus what turns them into model inputs (the processor or tokenizer)."""

    prompt_cache_bytes = 512 << 20
    """Rendered prompts (images decoded, tensors made) are kept up to this many bytes, least recently used
    out first: few-shot RFT files are small and every epoch asks for the same rows again, and the processor
    costs several ms a prompt, more than a training step's optimizer update on a small model."""

    def __init__(self, rows: list[dict], lines: list[int], processor, vision: bool, what: str):
        self.rows, self.lines, self.processor, self.vision, self.what = rows, lines, processor, vision, what
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self._prompts: OrderedDict[int, tuple[Prompt, int]] = OrderedDict()
        self._prompt_bytes = 0

    def __len__(self) -> int:
        return len(self.rows)

    def _where(self, i: int) -> str:
        return f"{self.what} line {self.lines[i]}"

    def _encode(self, text: str, images: list) -> tuple[list[int], dict, dict]:
        """(input_ids, tensors concatenable across sequences, per-token extras) of one rendered text."""
        if self.vision:
            enc = self.processor(text=[text], images=images or None, return_tensors="pt")
        else:
            enc = self.tokenizer([text], return_tensors="pt", add_special_tokens=False)
        ids = enc["input_ids"][0].tolist()
        mm, per_token = {}, {}
        for k, v in enc.items():
            if k in ("input_ids", "attention_mask"):
                continue
            if isinstance(v, torch.Tensor) and v.dim() == 2 and v.shape == enc["input_ids"].shape:
                per_token[k] = v[0].tolist()  # e.g. mm_token_type_ids: one value per token
            else:
                mm[k] = v
        return ids, mm, per_token

    def _chat(self, messages: list[dict], add_generation_prompt: bool) -> str:
        return self.processor.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                                  tokenize=False)

    def prompt(self, i: int) -> Prompt:
        """The RFT prompt of row i: its messages up to the last user message, with a generation prompt.
        The same object for the same row while it stays in the cache (treat it as read-only)."""
        hit = self._prompts.get(i)
        if hit is not None:
            self._prompts.move_to_end(i)
            return hit[0]
        p = self._render_prompt(i)
        size = sum(t.nbytes for t in p.mm.values()) + sum(img.width * img.height * 3 for img in p.images)  # RGB
        if size <= self.prompt_cache_bytes:
            self._prompts[i] = (p, size)
            self._prompt_bytes += size
            while self._prompt_bytes > self.prompt_cache_bytes:
                self._prompt_bytes -= self._prompts.popitem(last=False)[1][1]
        return p

    def _render_prompt(self, i: int) -> Prompt:
        where = self._where(i)
        messages = row_messages(self.rows[i])
        last_user = max((k for k, m in enumerate(messages) if m.get("role") == "user"), default=None)
        if last_user is None:
            raise DataError(f"{where}: no user message to answer")
        msgs, urls = to_template_messages(messages[: last_user + 1], where, self.vision)
        try:
            images = [load_image(u) for u in urls]
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"{where}: cannot read an image ({type(e).__name__}: {e})") from None
        text = self._chat(msgs, add_generation_prompt=True)
        ids, mm, per_token = self._encode(text, images)
        return Prompt(i, self.rows[i], text, images, ids, mm, per_token)

    def sft_example(self, i: int) -> tuple[list[int], list[int], dict, dict]:
        """(input_ids, labels with -100 outside trained assistant turns, mm, per-token extras) for SFT.

        Assistant turns are found by rendering growing prefixes of the conversation: the tokens between
        "prefix + generation prompt" and "prefix + this assistant turn" are that turn's (content and end
        token). A turn with `"weight": 0` is not trained, as in OpenAI's format.
        """
        where = self._where(i)
        messages = self.rows[i]["messages"]
        msgs, urls = to_template_messages(messages, where, self.vision)
        trained = [k for k, m in enumerate(messages) if m.get("role") == "assistant" and m.get("weight", 1) != 0]
        if not trained:
            raise DataError(f"{where}: no assistant message to learn (supervised rows need one)")
        try:
            images = [load_image(u) for u in urls]
        except Exception as e:
            raise DataError(f"{where}: cannot read an image ({type(e).__name__}: {e})") from None
        full_text = self._chat(msgs, add_generation_prompt=False)
        ids, mm, per_token = self._encode(full_text, images)
        labels = [-100] * len(ids)
        for k in trained:
            # The tokens before this turn (with the generation prompt) and up to its end token.
            n_img = sum(1 for m in msgs[: k + 1] if not isinstance(m["content"], str)
                        for p in m["content"] if p.get("type") == "image")
            start_text = self._chat(msgs[:k], add_generation_prompt=True)
            end_text = self._chat(msgs[: k + 1], add_generation_prompt=False)
            if not full_text.startswith(start_text) or not full_text.startswith(end_text):
                raise DataError(f"{where}: the chat template is not prefix-stable; cannot locate assistant turns")
            start = len(self._encode(start_text, images[:n_img])[0])
            end_ids = self._encode(end_text, images[:n_img])[0]
            end = len(end_ids)
            if ids[:end] != end_ids:
                raise DataError(f"{where}: tokenisation of the conversation is not prefix-stable")
            labels[start:end] = ids[start:end]
        return ids, labels, mm, per_token


    def preference(self, i: int) -> tuple[Prompt, list[int], list[int]]:
        """(the prompt, the preferred answer's tokens, the non-preferred answer's tokens) of preference row i.

        The prompt is the row's `input.messages` (ending with the user's) with a generation prompt, as
        `prompt(i)` renders it; an answer's tokens are those the chat template puts after it for that assistant
        message (its content and end-of-turn tokens), found by rendering the conversation with the answer and
        checking that the prompt's tokens are its prefix (image placeholders unexpanded: tokenizer only)."""
        where = self._where(i)
        row = self.rows[i]
        messages = row_messages(row)
        if not messages or messages[-1].get("role") != "user":
            raise DataError(f"{where}: a preference row's input.messages must end with the user's message")
        p = self.prompt(i)
        msgs, _ = to_template_messages(messages, where, self.vision)
        prompt_ids = self.tokenizer(p.text, add_special_tokens=False)["input_ids"]
        answers = []
        for key in ("preferred_output", "non_preferred_output"):
            out = row.get(key)
            if not isinstance(out, list) or len(out) != 1 or not isinstance(out[0], dict) \
                    or out[0].get("role") != "assistant":
                raise DataError(f"{where}: `{key}` must be a list of one assistant message")
            answer, _ = to_template_messages(out, f"{where}, {key}", self.vision)
            text = self._chat(msgs + answer, add_generation_prompt=False)
            if not text.startswith(p.text):
                raise DataError(f"{where}: the chat template is not prefix-stable; cannot locate the answer")
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if ids[:len(prompt_ids)] != prompt_ids or len(ids) == len(prompt_ids):
                raise DataError(f"{where}: `{key}` has no tokens after the prompt, or its tokenisation is not "
                                "prefix-stable")
            answers.append(ids[len(prompt_ids):])
        return p, answers[0], answers[1]


def pack_prompts(prompts: list[Prompt], pad_id: int):
    """Prompts -> input_ids, attention_mask [B, P] (left-padded, so every prompt ends at column P: what
    follows, sampled or trained, starts at the same column), the images' tensors concatenated (`cat_mm`) and
    the per-token extras [B, P] (0 on padding). The one batch layout of rollouts and GRPO training."""
    P = max(len(p.input_ids) for p in prompts)
    ids = torch.full((len(prompts), P), pad_id, dtype=torch.long)
    att = torch.zeros((len(prompts), P), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, P - len(p.input_ids):] = torch.tensor(p.input_ids, dtype=torch.long)
        att[b, P - len(p.input_ids):] = 1
    per_token = pad_per_token([p.per_token for p in prompts], [len(p.input_ids) for p in prompts], P, left_to=P)
    return ids, att, cat_mm([p.mm for p in prompts]), per_token


def pad_per_token(extras: list[dict[str, list[int]]], prompt_lens: list[int], width: int, left_to: int | None):
    """Per-token extras -> [B, width] tensors (0 on padding and on completion tokens).

    left_to=P: prompts right-aligned at column P (GRPO layout); None: left-aligned (SFT layout).
    """
    out = {}
    for k in (extras[0] if extras else {}):
        t = torch.zeros((len(extras), width), dtype=torch.long)
        for b, (e, n) in enumerate(zip(extras, prompt_lens)):
            start = 0 if left_to is None else left_to - n
            t[b, start:start + n] = torch.tensor(e[k], dtype=torch.long)
        out[k] = t
    return out


def cat_mm(mms: list[dict]) -> dict[str, torch.Tensor]:
    """Concatenate the processor's extra tensors of several sequences (pixel_values, image_grid_thw...).
    Sequences without images have none of them: the images of the others are still all passed, in order,
    which is how the model pairs them with the image tokens of the batch."""
    keys = dict.fromkeys(k for m in mms for k in m)
    return {k: torch.cat([m[k] for m in mms if k in m], dim=0) for k in keys}
