"""The input of the judge graders (score_model, label_model): OpenAI's message shapes, their template checks,
and their rendering into chat messages."""

from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from grader.templates import Template, check_template


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow")


class InputText(_Part):
    text: str
    """The text input to the model; may contain templates."""
    type: Literal["input_text"]


class OutputText(_Part):
    text: str
    """A text output from the model; may contain templates."""
    type: Literal["output_text"]


class InputImage(_Part):
    image_url: str
    """The URL of the image (https or data URL); may be a template such as `{{item.image_url}}`."""
    type: Literal["input_image"]
    detail: Optional[str] = None
    """`high`, `low` or `auto` (default)."""


class InputAudioData(_Part):
    data: str
    format: Literal["mp3", "wav"]


class InputAudio(_Part):
    input_audio: InputAudioData
    type: Literal["input_audio"]


ContentPart = Annotated[Union[InputText, OutputText, InputImage, InputAudio], Field(discriminator="type")]
InputContent = Union[str, ContentPart, list[Union[str, ContentPart]]]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    content: InputContent
    """Text, output text, image or audio, alone or as a list; may contain templates."""
    role: Literal["user", "assistant", "system", "developer"]
    type: Optional[Literal["message"]] = None


def check_messages(messages: list[Message], join) -> None:
    """Check the templates of every text and image URL; `param` e.g. `input.1.content.0.text`."""
    for i, msg in enumerate(messages):
        parts = msg.content if isinstance(msg.content, list) else [msg.content]
        for j, part in enumerate(parts):
            where = f"input.{i}.content" + (f".{j}" if isinstance(msg.content, list) else "")
            if isinstance(part, str):
                check_template(part, join(where))
            elif isinstance(part, (InputText, OutputText)):
                check_template(part.text, join(f"{where}.text"))
            elif isinstance(part, InputImage):
                check_template(part.image_url, join(f"{where}.image_url"))


class Prompt:
    """The grader's `input` messages with every template parsed once."""

    def __init__(self, messages: list[Message]):
        self.messages = []
        for i, msg in enumerate(messages):
            role = "system" if msg.role == "developer" else msg.role
            if isinstance(msg.content, list):
                parts = [self._part(p, f"input.{i}.content.{j}") for j, p in enumerate(msg.content)]
                self.messages.append((role, parts))
            else:
                self.messages.append((role, self._part(msg.content, f"input.{i}.content")))

    @staticmethod
    def _part(p, where):
        if isinstance(p, str):
            return ("text", Template(p, where))
        if isinstance(p, (InputText, OutputText)):
            return ("text", Template(p.text, where))
        if isinstance(p, InputImage):
            return ("image", Template(p.image_url, where), p.detail)
        if isinstance(p, InputAudio):
            return ("audio", p.input_audio.data, p.input_audio.format)
        raise TypeError(type(p))

    @staticmethod
    def _render_part(part, sample, item, in_list: bool):
        kind = part[0]
        if kind == "text":
            text = part[1].render(sample, item)
            return {"type": "text", "text": text} if in_list else text
        if kind == "image":
            url = {"url": part[1].render(sample, item)}
            if part[2]:
                url["detail"] = part[2]
            return {"type": "image_url", "image_url": url}
        return {"type": "input_audio", "input_audio": {"data": part[1], "format": part[2]}}

    def render(self, sample, item) -> list[dict]:
        out = []
        for role, content in self.messages:
            if isinstance(content, list):
                out.append({"role": role, "content": [self._render_part(p, sample, item, True) for p in content]})
            else:
                rendered = self._render_part(content, sample, item, False)
                out.append({"role": role, "content": rendered if isinstance(rendered, str) else [rendered]})
        return out
