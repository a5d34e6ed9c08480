"""`multi` (OpenAI): several graders combined by `calculate_output` (grader/formula.py); no nesting."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from pydantic import Field, SerializeAsAny, ValidationError

from grader import registry
from grader.errors import GraderValidationError, empty_errors, merge_errors
from grader.formula import Formula, FormulaError
from grader.registry import Spec, from_pydantic, joiner, register
from grader.reward import BatchResult, Col, Reward, merge_usage, zero_nonfinite


class MultiGrader(Spec):
    """Several graders combined by `calculate_output` (variables: the keys of `graders`)."""

    calculate_output: str
    """A formula over the graders' keys: + - * / ^, min max abs floor ceil exp sqrt log."""
    graders: dict[str, SerializeAsAny["ChildGrader"]] = Field(  # noqa: F821 (the registry's union: registry.resolve)
        json_schema_extra={"minProperties": 1})  # documented only: parse() refuses an empty one with its message
    """The graders, keyed by the names used in the formula (a single grader or a list is keyed by name)."""
    name: str
    type: Literal["multi"]

    @classmethod
    def parse(cls, spec: dict, prefix: str, *, top_level: bool) -> "MultiGrader":
        join = joiner(prefix)
        graders = spec.get("graders")
        if graders is None:
            raise GraderValidationError(f"Missing required parameter: '{join('graders')}'.", join("graders"))
        # Accept the canonical dict, a single grader object (SDK >= 1.83 typing) or a list (API reference example).
        if isinstance(graders, dict) and "type" in graders and isinstance(graders.get("type"), str):
            graders = [graders]
        if isinstance(graders, list):
            keyed: dict[str, Any] = {}
            for i, g in enumerate(graders):
                where = join(f"graders.{i}.name")
                if not isinstance(g, dict) or not isinstance(g.get("name"), str) or not g.get("name"):
                    raise GraderValidationError(f"Missing required parameter: '{where}'.", where)
                if g["name"] in keyed:
                    raise GraderValidationError(
                        f"Invalid value for '{where}': duplicate grader name '{g['name']}'.", where)
                keyed[g["name"]] = g
            graders = keyed
        if not isinstance(graders, dict) or not graders:
            raise GraderValidationError(
                f"Invalid value for '{join('graders')}': expected a non-empty object of graders.", join("graders")
            )
        children = {key: registry.validate(child, join(f"graders.{key}"), top_level=top_level, inside_multi=True)
                    for key, child in graders.items()}
        try:
            model = cls.model_validate({**spec, "graders": {}}, strict=True)
        except ValidationError as err:
            raise from_pydantic(err, prefix) from None
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
                f"Invalid value for '{join('calculate_output')}': unknown variable(s) "
                f"{', '.join(map(repr, unknown))}; the formula may use the graders' keys: "
                f"{', '.join(map(repr, children))}.",
                join("calculate_output"),
            )
        return model


class Multi(Reward):
    """The children's rewards, each a column, combined by the formula in one vectorised pass."""

    def __init__(self, spec: MultiGrader, context):
        super().__init__(spec)
        self.children = {k: registry.reward(g, context) for k, g in spec.graders.items()}
        self.formula = Formula(spec.calculate_output)
        self.texts_only = all(c.texts_only for c in self.children.values())

    def columns(self, samples, items) -> dict[str, Col]:
        """Each child's column; the children that wait (sandbox, judge) run on threads when there are several."""
        waiting = [k for k, c in self.children.items() if c.waits]
        if len(waiting) < 2:
            return {k: c.column(samples, items) for k, c in self.children.items()}
        with ThreadPoolExecutor(max_workers=len(waiting)) as ex:
            futures = {k: ex.submit(self.children[k].column, samples, items) for k in waiting}
            outs = {k: c.column(samples, items) for k, c in self.children.items() if k not in futures}
            outs.update({k: f.result() for k, f in futures.items()})
        return {k: outs[k] for k in self.children}

    def batch(self, samples, items) -> BatchResult:
        """A failed child scores 0 in the formula (the sample keeps the others' reward) and sets its errors."""
        import numpy as np

        n = len(samples)
        outs = self.columns(samples, items)
        sub: dict[str, list[float]] = {}
        components: dict[str, list] = {}
        for k, col in outs.items():
            sub[k] = list(col.scores)
            for i in col.errors:
                sub[k][i] = 0.0
            components.update({f"{k}.{c}": v for c, v in col.components().items()})
        env = {k: np.asarray(v, dtype=np.float64) for k, v in sub.items()}
        with np.errstate(all="ignore"):
            try:
                values = np.broadcast_to(np.asarray(self.formula.evaluate_batch(env), dtype=np.float64), (n,))
            except (ArithmeticError, ValueError, TypeError):
                values = np.full(n, np.nan)
        rewards = values.tolist()
        errors: dict[int, dict] = {}
        messages: dict[int, str] = {}
        for k, col in outs.items():
            for i, e in col.errors.items():
                merge_errors(errors.setdefault(i, empty_errors()), e.to_errors())
                messages[i] = (messages[i] + "; " if i in messages else "") + f"{k}: {e.message}"
        zero_nonfinite(rewards, errors, messages, lambda r: "the formula has no finite value here")
        usage, models = merge_usage(outs.values(), n)
        return BatchResult(self.name, self.type, rewards, sub_rewards=sub, components=components, errors=errors,
                           messages=messages, token_usage=usage, sampled_model_names=models, multi=True)

    def close(self) -> None:
        for c in self.children.values():
            c.close()


register(MultiGrader, Multi, in_multi=False)
