"""Templates (`{{item.a.b[0]}}`, `{{sample.output_text}}`) and the `sample` namespace.

The only namespaces are `item` (the dataset row) and `sample` (the model's output), as in OpenAI's
graders guide. Paths use dots and `[index]` / `["key"]`. A variable that does not resolve on a
sample raises `SampleError("invalid_variable_error")`; a malformed template fails validation.
"""

from __future__ import annotations

import itertools
import json
import operator
import re
from typing import Any

from grader.errors import GraderValidationError, SampleError

NAMESPACES = ("item", "sample")
SAMPLE_VARIABLES = ("output_text", "output_json", "output_tools", "choices", "output_audio", "answer")
"""Variables of the `sample` namespace; `answer` (text inside <answer> tags) is our extension."""

_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_SEGMENT = re.compile(r"""\.\s*([A-Za-z_][\w-]*)|\[\s*(-?\d+)\s*\]|\[\s*(?:"([^"]*)"|'([^']*)')\s*\]""")
_HEAD = re.compile(r"\s*([A-Za-z_]\w*)")
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)


def parse_path(expr: str) -> tuple[str, tuple[str | int, ...]]:
    """Parse ``item.a[0]["b c"]`` into ``("item", ("a", 0, "b c"))``; raise ValueError when malformed.
    """
    m = _HEAD.match(expr)
    if not m:
        raise ValueError(f"malformed template variable '{{{{{expr}}}}}'")
    namespace, pos, path = m.group(1), m.end(), []
    rest = expr.rstrip()
    while pos < len(rest):
        seg = _SEGMENT.match(rest, pos)
        if not seg:
            raise ValueError(f"malformed template variable '{{{{{expr}}}}}'")
        name, index, dq, sq = seg.groups()
        path.append(name if name is not None else int(index) if index is not None else (dq if dq is not None else sq))
        pos = seg.end()
    return namespace, tuple(path)


def check_template(text: str, param: str) -> list[tuple[str, tuple]]:
    """Validate every placeholder of `text`: known namespace, known sample variable, parsable path."""
    out = []
    for m in _PLACEHOLDER.finditer(text):
        try:
            namespace, path = parse_path(m.group(1))
        except ValueError as e:
            raise GraderValidationError(f"Invalid template in '{param}': {e}", param) from None
        if namespace not in NAMESPACES:
            raise GraderValidationError(
                f"Invalid template in '{param}': unknown namespace '{namespace}' in '{m.group(0)}'; "
                f"supported namespaces are {', '.join(NAMESPACES)}",
                param,
            )
        if namespace == "sample" and (not path or path[0] not in SAMPLE_VARIABLES):
            var = path[0] if path else ""
            raise GraderValidationError(
                f"Invalid template in '{param}': unknown variable 'sample.{var}'; "
                f"supported are {', '.join('sample.' + v for v in SAMPLE_VARIABLES)}",
                param,
            )
        if namespace == "item" and not path:
            raise GraderValidationError(f"Invalid template in '{param}': '{{{{item}}}}' needs a field", param)
        out.append((namespace, path))
    if "{{" in _PLACEHOLDER.sub("", text):
        raise GraderValidationError(f"Invalid template in '{param}': unclosed '{{{{'", param)
    return out


def lookup(namespace: str, path: tuple, sample: dict, item: Any) -> Any:
    """Resolve one variable; raise SampleError(invalid_variable_error) when it is missing."""
    value = sample if namespace == "sample" else item
    for key in path:
        try:
            if isinstance(value, dict) and isinstance(key, str):
                value = value[key]
            elif isinstance(value, list) and isinstance(key, int):
                value = value[key]
            else:
                raise KeyError(key)
        except (KeyError, IndexError):
            raise SampleError(
                "invalid_variable_error", f"variable '{_fmt(namespace, path)}' not found"
            ) from None
    if value is None:
        raise SampleError("invalid_variable_error", f"variable '{_fmt(namespace, path)}' is null")
    return value


def _fmt(namespace: str, path: tuple) -> str:
    return namespace + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


def to_text(value: Any) -> str:
    """How a non-string value is written into a template: JSON, unicode kept."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


class Template:
    """A template parsed once (per job) and rendered per sample."""

    def __init__(self, text: str, param: str = "input"):
        self.text = text
        self.vars = check_template(text, param)
        parts = _PLACEHOLDER.split(text)
        self._literals = parts[0::2]
        single = len(self.vars) == 1 and self._literals[0].strip() == "" and self._literals[1].strip() == ""
        self._single = single
        # the common `{{sample.answer}}` / `{{item.key}}`: one dict lookup
        self._flat = single and len(self.vars[0][1]) == 1 and isinstance(self.vars[0][1][0], str)

    def render(self, sample: dict, item: Any) -> str:
        """The text with every variable substituted."""
        if not self.vars:
            return self.text
        out = [self._literals[0]]
        for (ns, path), lit in zip(self.vars, self._literals[1:]):
            out.append(to_text(lookup(ns, path, sample, item)))
            out.append(lit)
        return "".join(out)

    def resolve(self, sample: dict, item: Any) -> Any:
        """The raw value when the template is exactly one variable (lists, dicts kept), else the text."""
        if self._flat:
            ns, (key,) = self.vars[0]
            src = sample if ns == "sample" else item
            try:
                value = src[key]
            except (KeyError, TypeError, IndexError):
                value = None
            if value is not None:
                return value
            return lookup(ns, (key,), sample, item)  # raises the right error
        if self._single:
            return lookup(*self.vars[0], sample, item)
        return self.render(sample, item)

    def resolve_all(self, samples: list, items: list) -> list:
        """`resolve` of every (sample, item) pair, with the SampleError in place of a value that fails."""
        if self._flat:  # one key: a single C-level pass when every row has it (the usual case)
            ns, (key,) = self.vars[0]
            try:
                values = [x[key] for x in (samples if ns == "sample" else items)]
            except (KeyError, TypeError, IndexError):
                values = None
            if values is not None and all(map(operator.is_not, values, itertools.repeat(None))):  # not `in`: no ==
                return values
        return each_or_error(self.resolve, samples, items)


def each_or_error(fn, samples: list, items: list) -> list:
    """`fn(sample, item)` of every pair, with the SampleError in place of a value that fails."""
    out = []
    for s, it in zip(samples, items):
        try:
            out.append(fn(s, it))
        except SampleError as e:
            out.append(e)
    return out


def extract_answer(text: str) -> str:
    """The text inside the last complete ``<answer>...</answer>`` pair, stripped; "" when there is none.
    """
    end = text.rfind("</answer>")
    if end != -1:
        start = text.rfind("<answer>", 0, end)
        if start != -1:
            return text[start + 8 : end].strip()
    if "</" not in text:
        return ""
    found = _ANSWER.findall(text)  # other letter cases, e.g. <Answer>
    return found[-1].strip() if found else ""


class Sample(dict):
    """The `sample` namespace, computed lazily: only `output_text` is stored up front; `answer`,
    `output_json`, `choices`... are derived on first access (graders on the hot path read one or two)."""

    def __missing__(self, key):
        text = dict.__getitem__(self, "output_text")
        if key == "answer":
            value = extract_answer(text)
        elif key == "output_json":
            value = _json_or_none(text)
        elif key == "choices":
            value = [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]
        elif key == "output_tools":
            value = []
        elif key == "output_audio":
            value = None
        else:
            raise KeyError(key)
        self[key] = value
        return value

    def full(self) -> dict:
        """A plain dict with every variable (what a python grader receives)."""
        out = dict(self)
        for key in SAMPLE_VARIABLES:
            out[key] = self[key]
        return out


def make_sample(model_sample: Any) -> Sample:
    """Build the `sample` namespace from a model output string or a dict with OpenAI's sample fields.

    A string becomes `output_text`; `output_json` is set when it is valid JSON (an object or a list),
    `choices` holds one chat choice with that text; `answer` is the text inside <answer> tags.
    A dict may carry output_text, output_json, output_tools, choices, output_audio.
    """
    if type(model_sample) is str:
        return Sample(output_text=model_sample)
    if isinstance(model_sample, Sample):
        return model_sample
    if isinstance(model_sample, dict):
        sample = Sample(model_sample)
        text = model_sample.get("output_text")
        if text is None:
            try:
                text = model_sample["choices"][0]["message"]["content"] or ""
            except (KeyError, IndexError, TypeError):
                text = ""
        sample["output_text"] = text if isinstance(text, str) else to_text(text)
        return sample
    return Sample(output_text="" if model_sample is None else str(model_sample))


def _json_or_none(text: str) -> Any:
    s = text.strip()
    if not s or s[0] not in "[{":
        return None
    try:
        return json.loads(s)
    except ValueError:
        return None
