"""`text_similarity` (OpenAI): a similarity metric between `input` and `reference`, in [0, 1] (grader/metrics.py)."""

from __future__ import annotations

import logging
from typing import Literal, Optional

from grader import metrics
from grader.errors import SampleError
from grader.registry import Spec, register
from grader.reward import Out, Reward, first_error, resolve_all
from grader.templates import Template

log = logging.getLogger(__name__)


class TextSimilarityGrader(Spec):
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

    templates = ("input", "reference")


class TextSimilarity(Reward):
    def __init__(self, spec: TextSimilarityGrader, context=None):
        super().__init__(spec)
        self.input, self.reference = Template(spec.input, "input"), Template(spec.reference, "reference")
        self.metric = metrics.METRICS[spec.evaluation_metric]

    def grade(self, samples, items):
        a_all = resolve_all(self.input, samples, items)
        b_all = resolve_all(self.reference, samples, items)
        out: list = [None] * len(a_all)
        todo = []
        for i, (a, b) in enumerate(zip(a_all, b_all)):
            err = first_error(a, b)
            if err:
                out[i] = Out(0.0, err)
            else:
                todo.append(i)
        if self.spec.evaluation_metric == "cosine" and todo:  # one batch through the embedding model
            try:
                sims = metrics.cosine_batch([a_all[i] for i in todo], [b_all[i] for i in todo])
                for i, s in zip(todo, sims):
                    e = metrics._empty(a_all[i], b_all[i])
                    out[i] = Out(e if e is not None else s)
            except Exception as e:  # the embedding model is missing or failed
                log.warning("cosine similarity unavailable: %s", e)
                for i in todo:
                    out[i] = Out(0.0, SampleError("other_error", f"cosine similarity unavailable: {e}"))
            return out
        for i in todo:
            try:
                out[i] = Out(float(self.metric(a_all[i], b_all[i])))
            except Exception as e:
                out[i] = Out(0.0, SampleError("other_error", f"{self.spec.evaluation_metric}: {e}"))
        return out


register(TextSimilarityGrader, TextSimilarity)
