"""The grader types, registered by their `type` name: the one place that knows them all.

A type is one module of grader/types/: its spec (a `Spec` subclass with OpenAI's JSON), its semantic checks
(`Spec.check`) and its reward (a `grader.reward.Reward`), joined by `register(SpecClass, RewardClass)`.
From what is registered this module derives the discriminated unions, the lookups by type name, the
top-level and multi-child rules, validation (OpenAI's messages, `param` the dotted path inside the grader
object) and the compile dispatch. Nothing here branches on a type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Callable, ClassVar, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from grader.errors import GraderValidationError
from grader.templates import check_template


def joiner(prefix: str) -> Callable[[str], str]:
    """`join(field)`: the dotted `param` of a field of the grader at `prefix`."""
    return lambda p: f"{prefix}.{p}" if prefix else p


class Spec(BaseModel):
    """A grader spec: the JSON of one `type`; unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")
    templates: ClassVar[tuple[str, ...]] = ()
    """The fields that hold templates (`{{item.x}}`), checked by `check`."""

    def check(self, join: Callable[[str], str]) -> None:
        """What pydantic cannot check: the templates, and what a type adds (overriding this, calling super()).
        Raises GraderValidationError(message, join(field))."""
        for name in self.templates:
            check_template(getattr(self, name), join(name))

    @classmethod
    def parse(cls, spec: dict, prefix: str, *, top_level: bool) -> "Spec":
        """The typed spec of a JSON object whose `type` is this one; a type with children overrides it. Strict,
        as JSON Schema reads the spec: `false` or `"0.5"` is not a number, `1` is not a boolean."""
        try:
            model = cls.model_validate(spec, strict=True)
        except ValidationError as err:
            raise from_pydantic(err, prefix) from None
        model.check(joiner(prefix))
        return model


@dataclass(frozen=True)
class GraderType:
    spec: type[Spec]
    reward: Callable[..., Any]
    """`reward(spec, context)` -> a grader.reward.Reward (a Reward subclass, or a function)."""
    top_level: bool = True
    """Allowed as an RFT job's grader (label_model is not, as at OpenAI)."""
    in_multi: bool = True
    """Allowed inside a multi grader (multi is not: no nesting)."""


TYPES: dict[str, GraderType] = {}
"""The registered types by name, in registration order."""


def register(spec: type[Spec], reward: Callable[..., Any], *, top_level: bool = True, in_multi: bool = True) -> None:
    """Register a grader type under the name its spec's `type: Literal["name"]` field declares."""
    (name,) = get_args(spec.model_fields["type"].annotation)
    TYPES[name] = GraderType(spec, reward, top_level, in_multi)


def union(where: Callable[[GraderType], bool] = lambda t: True) -> Any:
    """The spec classes of the types `where` accepts, as a union tagged by `type`."""
    return Annotated[Union[tuple(t.spec for t in TYPES.values() if where(t))], Field(discriminator="type")]


def resolve() -> None:
    """Resolve the forward references `GraderSpec` (any type) and `ChildGrader` (a type allowed inside multi),
    once every built-in type is registered (validation never goes through these unions)."""
    names = {"GraderSpec": union(), "ChildGrader": union(lambda t: t.in_multi)}
    for t in TYPES.values():
        t.spec.model_rebuild(_types_namespace=names)


def top_level_types() -> frozenset[str]:
    return frozenset(k for k, t in TYPES.items() if t.top_level)


def multi_child_types() -> frozenset[str]:
    return frozenset(k for k, t in TYPES.items() if t.in_multi)


def reward(spec: Spec, context: Any) -> Any:
    """The compile dispatch: the reward of a validated spec."""
    return TYPES[spec.type].reward(spec, context)


# ---------------------------------------------------------------- validation


def validate_grader(spec: Any, *, top_level: bool = True) -> Any:
    """Validate a grader object as OpenAI does and return the typed spec, or raise GraderValidationError.
    `top_level=True` applies the RFT rule that `label_model` is only allowed inside `multi`."""
    if isinstance(spec, BaseModel):
        spec = spec.model_dump(exclude_none=True)
    return validate(spec, "", top_level=top_level)


def validate(spec: Any, prefix: str, *, top_level: bool, inside_multi: bool = False) -> Spec:
    """Validate the grader object at `prefix` (a multi grader validates its children with inside_multi)."""
    join = joiner(prefix)
    if not isinstance(spec, dict):
        raise GraderValidationError(f"Invalid type for '{prefix or 'grader'}': expected an object.", prefix)
    kind = spec.get("type")
    if kind is None:
        raise GraderValidationError(f"Missing required parameter: '{join('type')}'.", join("type"))
    t = TYPES.get(kind) if isinstance(kind, str) else None
    if t is None:
        allowed = sorted(multi_child_types() if inside_multi else top_level_types() if top_level else TYPES)
        raise GraderValidationError(
            f"Invalid value for '{join('type')}': '{kind}'. Supported values are: {', '.join(allowed)}.",
            join("type"),
        )
    if inside_multi and not t.in_multi:
        raise GraderValidationError(
            f"Invalid value for '{join('type')}': {kind} graders cannot be nested.", join("type")
        )
    if top_level and not inside_multi and not t.top_level:
        raise GraderValidationError(
            f"Invalid value for '{join('type')}': '{kind}' graders are only allowed inside a 'multi' grader.",
            join("type"),
        )
    return t.spec.parse(spec, prefix, top_level=top_level)


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


def from_pydantic(err: ValidationError, prefix: str) -> GraderValidationError:
    """OpenAI's message for pydantic's first error, `param` prefixed with `prefix`."""
    e = err.errors()[0]
    param = ".".join(str(p) for p in ((prefix,) if prefix else ()) + tuple(_clean_loc(tuple(e["loc"]))))
    kind, msg = e["type"], e["msg"]
    if kind == "missing":
        return GraderValidationError(f"Missing required parameter: '{param}'.", param)
    if kind == "extra_forbidden":
        return GraderValidationError(f"Unknown parameter: '{param}'.", param)
    return GraderValidationError(f"Invalid value for '{param}': {msg}.", param)
