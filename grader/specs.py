"""Grader specs: pydantic models with OpenAI's exact JSON, plus our visual graders.

OpenAI's types (openai-python `types/graders/*.py`): string_check, text_similarity, python, score_model,
label_model, multi. Ours, each a first-class `type`: iou, format, classification (see grader/README.md).

`validate_grader(spec)` is the one entry point: it returns a typed spec or raises
`GraderValidationError(message, param)` with `param` the dotted path inside the grader object.
"""

from __future__ import annotations

import ast
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from grader.errors import GraderValidationError
from grader.formula import Formula, FormulaError
from grader.templates import check_template

MAX_PYTHON_SOURCE_BYTES = 256 * 1024
PYTHON_IMAGE_TAGS = ("2025-05-08",)
"""OpenAI's python grader image tags this sandbox stands in for: its packages are those of that image,
installed from PyPI (pyproject), except rdkit and scikit-bio (not installed)."""
"""OpenAI's limit on a python grader's source."""


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow")


# ---------------------------------------------------------------- model grader inputs (OpenAI shapes)


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


class Message(_Spec):
    content: InputContent
    """Text, output text, image or audio, alone or as a list; may contain templates."""
    role: Literal["user", "assistant", "system", "developer"]
    type: Optional[Literal["message"]] = None


class SamplingParams(_Spec):
    max_completions_tokens: Optional[int] = Field(default=None, ge=1)
    """The maximum number of tokens the grader model may generate."""
    reasoning_effort: Optional[Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]] = None
    seed: Optional[int] = None
    temperature: Optional[float] = Field(default=None, ge=0, le=2)
    top_p: Optional[float] = Field(default=None, gt=0, le=1)


# ---------------------------------------------------------------- OpenAI graders


class StringCheckGrader(_Spec):
    """1 when `input` compares to `reference` by `operation`, else 0."""

    input: str
    """The input text; may include templates."""
    name: str
    """The name of the grader."""
    operation: Literal["eq", "ne", "like", "ilike"]
    """eq: equal; ne: not equal; like: input contains reference; ilike: same, case-insensitive."""
    reference: str
    """The reference text; may include templates."""
    type: Literal["string_check"]


class TextSimilarityGrader(_Spec):
    """A similarity metric between `input` and `reference`, in [0, 1]."""

    evaluation_metric: Literal[
        "cosine", "fuzzy_match", "bleu", "gleu", "meteor",
        "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5", "rouge_l",
    ]
    """The metric; `cosine` uses a local sentence-embedding model (all-MiniLM-L6-v2)."""
    input: str
    """The text being graded; may include templates."""
    name: str
    """The name of the grader."""
    reference: str
    """The text graded against; may include templates."""
    type: Literal["text_similarity"]
    pass_threshold: Optional[float] = None
    """Accepted for compatibility with evals; the reward is the raw metric."""


class PythonGrader(_Spec):
    """`source` defines `grade(sample: dict, item: dict) -> float`, run in a sandbox."""

    name: str
    """The name of the grader."""
    source: str
    """The source code of the python script; must define `grade(sample, item)`."""
    type: Literal["python"]
    image_tag: Optional[str] = None
    """OpenAI's package image; one of `PYTHON_IMAGE_TAGS` (the sandbox runs the service's Python with that
    image's packages)."""


class ScoreModelGrader(_Spec):
    """A model reads `input` and answers a score; clipped to `range`."""

    input: list[Message]
    """The messages sent to the judge; may include templates."""
    model: str
    """A model the service serves, or one at the configured OpenAI-compatible endpoint."""
    name: str
    """The name of the grader."""
    type: Literal["score_model"]
    range: Optional[list[float]] = None
    """[min, max] of the score; defaults to [0, 1]."""
    sampling_params: Optional[SamplingParams] = None
    """Sampling parameters for the judge."""


class LabelModelGrader(_Spec):
    """A model picks one of `labels`; reward 1 when it is one of `passing_labels`. Only inside multi for RFT."""

    input: list[Message]
    labels: list[str]
    """The labels the judge may assign."""
    model: str
    name: str
    passing_labels: list[str]
    """Labels that pass; a subset of `labels`."""
    type: Literal["label_model"]


# ---------------------------------------------------------------- visual graders (our extension)

BoxFormat = Literal["xyxy", "xywh", "cxcywh"]
CoordinateSpace = Literal["pixel", "norm1000", "norm1"]


class SmartResize(_Spec):
    """Qwen2-VL/2.5-VL `smart_resize`: the image the model saw has sides rounded to multiples of `factor`
    with min_pixels <= h*w <= max_pixels. Qwen2.5-VL answers in absolute pixels of THAT image."""

    factor: int = Field(default=28, ge=1)
    min_pixels: int = Field(default=56 * 56, ge=1)
    max_pixels: int = Field(default=28 * 28 * 16384, ge=1)

    @model_validator(mode="after")
    def _order(self):
        if self.min_pixels > self.max_pixels:
            raise ValueError("min_pixels must not exceed max_pixels")
        return self


class BoxConvention(_Spec):
    """How a list of four numbers is to be read."""

    box_format: BoxFormat = "xyxy"
    """xyxy: corners; xywh: top-left + size; cxcywh: centre + size."""
    coordinates: CoordinateSpace = "norm1000"
    """norm1000: 0..1000 (Qwen2-VL, Visual-RFT); norm1: 0..1; pixel: absolute pixels."""
    resize: Optional[SmartResize] = None
    """For `pixel`: the pixels are those of the smart-resized image (Qwen2.5-VL)."""


class IouGrader(_Spec):
    """Box IoU reward: `grounding` (one box, dense IoU) or `detection` (many boxes, greedy matching).

    Detection follows Visual-RFT: predictions sorted by confidence are matched greedily to the unmatched
    reference box of highest IoU, a match counts when IoU >= iou_threshold; the IoU term is the sum of
    matched IoUs over max(#reference, #predicted); the confidence term is the mean over predictions of
    conf (matched) or 1 - conf (unmatched). reward = (1 - confidence_weight) * iou + confidence_weight * conf.
    """

    name: str
    type: Literal["iou"]
    input: str = "{{sample.answer}}"
    """Text holding the predicted boxes."""
    reference: str = "{{item.boxes}}"
    """Reference boxes: a list of boxes, of {"Position"|"bbox"|"box": [...]} objects, one box, or text."""
    mode: Literal["detection", "grounding"] = "detection"
    parser: Literal["auto", "json", "list", "tuple", "qwen"] = "auto"
    """json: [{"Position": [..], "Confidence": c}]; list: [x1,y1,x2,y2]; tuple: (x1,y1),(x2,y2);
    qwen: <|box_start|>(x1,y1),(x2,y2)<|box_end|>; auto tries them in that order."""
    input_format: BoxConvention = Field(default_factory=BoxConvention)
    """Convention of the model's boxes."""
    reference_format: Optional[BoxConvention] = None
    """Convention of the reference boxes; defaults to `input_format` (without `resize`)."""
    iou_threshold: float = Field(default=0.5, ge=0, le=1)
    """Detection: minimum IoU for a prediction to match a reference box."""
    iou_type: Literal["iou", "giou"] = "iou"
    """giou scores a pair by (GIoU + 1) / 2 so it stays in [0, 1]."""
    confidence_weight: float = Field(default=0.0, ge=0, le=1)
    """Weight of the confidence term (detection only)."""
    no_objects: str = "No Objects"
    """Answer meaning "no boxes" (case-insensitive); an empty prediction against an empty reference scores 1."""
    max_boxes: int = Field(default=100, ge=1)
    """Predicted boxes beyond this many are dropped."""


DEFAULT_FORMAT_PATTERN = r"<think>.*?</think>\s*<answer>.*?</answer>"


class FormatGrader(_Spec):
    """1 when `pattern` matches the whole `input`, else 0 (Visual-RFT's format reward)."""

    name: str
    type: Literal["format"]
    input: str = "{{sample.output_text}}"
    pattern: str = DEFAULT_FORMAT_PATTERN
    """A regular expression (Python `regex` syntax) that must match the whole input."""
    flags: list[Literal["ignorecase", "multiline", "dotall"]] = Field(default_factory=lambda: ["dotall"])
    strip: bool = True
    """Strip surrounding whitespace from the input first."""


class ClassificationGrader(_Spec):
    """1 when the normalised answer equals the reference or one of its synonyms, else 0; empty answer 0."""

    name: str
    type: Literal["classification"]
    input: str = "{{sample.answer}}"
    reference: str = "{{item.label}}"
    """The correct label (a string, or a list of accepted strings)."""
    synonyms: dict[str, list[str]] = Field(default_factory=dict)
    """Accepted aliases per label, e.g. {"airbus a320": ["a320"]}."""
    normalize: bool = True
    """Unicode NFKC + casefold, '_'/'-' as spaces, punctuation dropped, whitespace collapsed."""


# ---------------------------------------------------------------- multi

SubGrader = Annotated[
    Union[
        StringCheckGrader, TextSimilarityGrader, PythonGrader, ScoreModelGrader, LabelModelGrader,
        IouGrader, FormatGrader, ClassificationGrader,
    ],
    Field(discriminator="type"),
]


class MultiGrader(_Spec):
    """Several graders combined by `calculate_output` (variables: the keys of `graders`)."""

    calculate_output: str
    """A formula over the graders' keys: + - * / ^, min max abs floor ceil exp sqrt log."""
    graders: dict[str, SubGrader]
    """The graders, keyed by the names used in the formula (a single grader or a list is keyed by name)."""
    name: str
    type: Literal["multi"]


GraderSpec = Annotated[
    Union[
        StringCheckGrader, TextSimilarityGrader, PythonGrader, ScoreModelGrader, LabelModelGrader,
        MultiGrader, IouGrader, FormatGrader, ClassificationGrader,
    ],
    Field(discriminator="type"),
]

SPEC_CLASSES: dict[str, type[BaseModel]] = {
    "string_check": StringCheckGrader,
    "text_similarity": TextSimilarityGrader,
    "python": PythonGrader,
    "score_model": ScoreModelGrader,
    "label_model": LabelModelGrader,
    "multi": MultiGrader,
    "iou": IouGrader,
    "format": FormatGrader,
    "classification": ClassificationGrader,
}
OPENAI_TYPES = ("string_check", "text_similarity", "python", "score_model", "label_model", "multi")
VISUAL_TYPES = ("iou", "format", "classification")
TOP_LEVEL_TYPES = frozenset(SPEC_CLASSES) - {"label_model"}
"""Types allowed as an RFT job's grader (label_model only inside multi, as at OpenAI)."""
MULTI_CHILD_TYPES = frozenset(SPEC_CLASSES) - {"multi"}
"""Types allowed inside a multi grader (no nesting)."""


# ---------------------------------------------------------------- validation


def _loc(loc: tuple) -> str:
    return ".".join(str(p) for p in loc)


_PART_TAGS = ("input_text", "output_text", "input_image", "input_audio")


def _clean_loc(loc: tuple) -> list:
    """Drop the union-member labels pydantic puts in error locations ('str', 'list[...]', part tags)."""
    out: list = []
    for p in loc:
        if isinstance(p, str) and ("[" in p or p == "str"):
            continue
        if isinstance(p, str) and p in _PART_TAGS and out and (out[-1] == "content" or isinstance(out[-1], int)):
            if len(out) >= 2 and (out[-1] == "content" or out[-2] == "content"):
                continue
        out.append(p)
    return out


def _from_pydantic(err: ValidationError, prefix: str) -> GraderValidationError:
    e = err.errors()[0]
    param = _loc(tuple(x for x in (prefix,) if x) + tuple(_clean_loc(tuple(e["loc"]))))
    kind, msg = e["type"], e["msg"]
    if kind == "missing":
        return GraderValidationError(f"Missing required parameter: '{param}'.", param)
    if kind == "extra_forbidden":
        return GraderValidationError(f"Unknown parameter: '{param}'.", param)
    return GraderValidationError(f"Invalid value for '{param}': {msg}.", param)


def validate_grader(spec: Any, *, top_level: bool = True) -> GraderSpec:
    """Validate a grader object as OpenAI does and return the typed spec.

    Raises GraderValidationError(message, param). `top_level=True` applies the RFT rule that
    `label_model` is only allowed inside `multi`.

    >>> validate_grader({"type": "string_check", "name": "x", "input": "{{sample.output_text}}",
    ...                  "reference": "{{item.ref}}", "operation": "eq"}).operation
    'eq'
    """
    if isinstance(spec, BaseModel):
        spec = spec.model_dump(exclude_none=True)
    return _validate(spec, "", top_level=top_level)


def _validate(spec: Any, prefix: str, *, top_level: bool, inside_multi: bool = False) -> GraderSpec:
    join = (lambda p: f"{prefix}.{p}" if prefix else p)
    if not isinstance(spec, dict):
        raise GraderValidationError(
            f"Invalid type for '{prefix or 'grader'}': expected an object.", prefix
        )
    kind = spec.get("type")
    if kind is None:
        raise GraderValidationError(f"Missing required parameter: '{join('type')}'.", join("type"))
    if kind not in SPEC_CLASSES:
        allowed = sorted(MULTI_CHILD_TYPES if inside_multi else TOP_LEVEL_TYPES if top_level else SPEC_CLASSES)
        raise GraderValidationError(
            f"Invalid value for '{join('type')}': '{kind}'. Supported values are: {', '.join(allowed)}.",
            join("type"),
        )
    if inside_multi and kind == "multi":
        raise GraderValidationError(
            f"Invalid value for '{join('type')}': multi graders cannot be nested.", join("type")
        )
    if top_level and not inside_multi and kind not in TOP_LEVEL_TYPES:
        raise GraderValidationError(
            f"Invalid value for '{join('type')}': '{kind}' graders are only allowed inside a 'multi' grader.",
            join("type"),
        )
    if kind == "multi":
        return _validate_multi(spec, prefix, top_level=top_level)
    try:
        model = SPEC_CLASSES[kind].model_validate(spec)
    except ValidationError as err:
        raise _from_pydantic(err, prefix) from None
    _check_semantics(model, join)
    return model


def _validate_multi(spec: dict, prefix: str, *, top_level: bool) -> MultiGrader:
    join = (lambda p: f"{prefix}.{p}" if prefix else p)
    spec = dict(spec)
    graders = spec.get("graders")
    if graders is None:
        raise GraderValidationError(f"Missing required parameter: '{join('graders')}'.", join("graders"))
    # Accept the canonical dict, a single grader object (SDK >= 1.83 typing) or a list (API reference example).
    if isinstance(graders, dict) and "type" in graders and isinstance(graders.get("type"), str):
        graders = [graders]
    if isinstance(graders, list):
        keyed: dict[str, Any] = {}
        for i, g in enumerate(graders):
            if not isinstance(g, dict) or not isinstance(g.get("name"), str) or not g.get("name"):
                raise GraderValidationError(
                    f"Missing required parameter: '{join(f'graders.{i}.name')}'.", join(f"graders.{i}.name")
                )
            if g["name"] in keyed:
                raise GraderValidationError(
                    f"Invalid value for '{join(f'graders.{i}.name')}': duplicate grader name '{g['name']}'.",
                    join(f"graders.{i}.name"),
                )
            keyed[g["name"]] = g
        graders = keyed
    if not isinstance(graders, dict) or not graders:
        raise GraderValidationError(
            f"Invalid value for '{join('graders')}': expected a non-empty object of graders.", join("graders")
        )
    children = {}
    for key, child in graders.items():
        children[key] = _validate(child, join(f"graders.{key}"), top_level=top_level, inside_multi=True)
    rest = {k: v for k, v in spec.items() if k != "graders"}
    try:
        model = MultiGrader.model_validate({**rest, "graders": {}})
    except ValidationError as err:
        raise _from_pydantic(err, prefix) from None
    model.graders = children
    try:
        formula = Formula(model.calculate_output)
    except FormulaError as e:
        raise GraderValidationError(
            f"Invalid value for '{join('calculate_output')}': {e}.", join("calculate_output")
        ) from None
    unknown = sorted(formula.names - set(children))
    if unknown:
        raise GraderValidationError(
            f"Invalid value for '{join('calculate_output')}': unknown variable(s) {', '.join(map(repr, unknown))}; "
            f"the formula may use the graders' keys: {', '.join(map(repr, children))}.",
            join("calculate_output"),
        )
    return model


def _check_messages(messages: list[Message], join) -> None:
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


def _check_semantics(model: BaseModel, join) -> None:
    if isinstance(model, (StringCheckGrader, TextSimilarityGrader)):
        check_template(model.input, join("input"))
        check_template(model.reference, join("reference"))
    elif isinstance(model, PythonGrader):
        _check_python(model.source, join)
        if model.image_tag is not None and model.image_tag not in PYTHON_IMAGE_TAGS:
            raise GraderValidationError(
                f"Invalid value for '{join('image_tag')}': {model.image_tag!r}; this server provides "
                f"{', '.join(map(repr, PYTHON_IMAGE_TAGS))} (or leave it out).", join("image_tag"))
    elif isinstance(model, ScoreModelGrader):
        if not model.input:
            raise GraderValidationError(f"Invalid value for '{join('input')}': must not be empty.", join("input"))
        if not model.model.strip():
            raise GraderValidationError(f"Invalid value for '{join('model')}': must not be empty.", join("model"))
        if model.range is not None:
            if len(model.range) != 2 or not model.range[0] < model.range[1]:
                raise GraderValidationError(
                    f"Invalid value for '{join('range')}': expected [min, max] with min < max.", join("range")
                )
        _check_messages(model.input, join)
    elif isinstance(model, LabelModelGrader):
        if not model.input:
            raise GraderValidationError(f"Invalid value for '{join('input')}': must not be empty.", join("input"))
        if not model.labels:
            raise GraderValidationError(f"Invalid value for '{join('labels')}': must not be empty.", join("labels"))
        if not model.passing_labels:
            raise GraderValidationError(
                f"Invalid value for '{join('passing_labels')}': must not be empty.", join("passing_labels")
            )
        extra = [lbl for lbl in model.passing_labels if lbl not in model.labels]
        if extra:
            raise GraderValidationError(
                f"Invalid value for '{join('passing_labels')}': {extra[0]!r} is not one of the labels.",
                join("passing_labels"),
            )
        _check_messages(model.input, join)
    elif isinstance(model, IouGrader):
        check_template(model.input, join("input"))
        check_template(model.reference, join("reference"))
    elif isinstance(model, FormatGrader):
        check_template(model.input, join("input"))
        from grader.visual import compile_pattern

        try:
            compile_pattern(model.pattern, model.flags)
        except Exception as e:  # regex.error
            raise GraderValidationError(
                f"Invalid value for '{join('pattern')}': not a valid regular expression ({e}).", join("pattern")
            ) from None
    elif isinstance(model, ClassificationGrader):
        check_template(model.input, join("input"))
        check_template(model.reference, join("reference"))


def _check_python(source: str, join) -> None:
    if len(source.encode("utf-8")) > MAX_PYTHON_SOURCE_BYTES:
        raise GraderValidationError(
            f"Invalid value for '{join('source')}': source is larger than 256 kB.", join("source")
        )
    try:
        tree = ast.parse(source, "<grader>")
        compile(tree, "<grader>", "exec")
    except (SyntaxError, ValueError) as e:
        where = f" (line {e.lineno})" if getattr(e, "lineno", None) else ""
        raise GraderValidationError(
            f"Invalid value for '{join('source')}': the source does not compile: {getattr(e, 'msg', e)}{where}.",
            join("source"),
        ) from None
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "grade":
            if isinstance(node, ast.AsyncFunctionDef):
                raise GraderValidationError(
                    f"Invalid value for '{join('source')}': grade() must not be async.", join("source")
                )
            a = node.args
            positional = len(a.posonlyargs) + len(a.args)
            if positional < 2 and a.vararg is None:
                raise GraderValidationError(
                    f"Invalid value for '{join('source')}': grade() must take two arguments (sample, item).",
                    join("source"),
                )
            return
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "grade" for t in node.targets):
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)) and any((al.asname or al.name) == "grade" for al in node.names):
            return
    raise GraderValidationError(
        f"Invalid value for '{join('source')}': the source must define a function 'grade(sample, item)'.",
        join("source"),
    )
