"""Rollout records: what the model answered and why it got its reward, kept for a sample of the rollouts.

Each training step keeps its first `rollout_records` prompts (of the whole batch, all ranks) with all their G
completions; each evaluation keeps every validation prompt it sampled. They go out as one `rollouts` event per
step and split (trainer/events.py), which the job runner stores with the job (`GET .../rollouts` lists them).
A record is one completion:

    {"group": 0, "sample": 3, "line": 5, "completion": "<answer>[1, 2, 30, 40]</answer>", "reward": 0.75,
     "sub_rewards": {"format": 1.0, "task": 0.5}, "advantage": 0.82, "errors": [], "error_message": null,
     "completion_tokens": 14, "truncated": false}

`group`: the prompt's place in the step's batch (train) or in the evaluation's prompts (validation); `sample`:
the completion's place in its group; `line`: the prompt's line in the training or validation file;
`sub_rewards`: each grader's score (a multi grader's keys, else the grader's name); `advantage`: null for
validation; `errors`: the grader's error flags set for this sample (grader/errors.py), `error_message` why.
"""

from __future__ import annotations

import torch


def build_records(data, prompts: list, groups: list, graded, take: dict[int, int],
                  advantages: torch.Tensor | None = None) -> list[dict]:
    """The records of the prompts in `take` ({index in `prompts`: its group number}), all their completions.

    data: the ChatData the prompts come from (for the line numbers); groups[i]: prompt i's completions (each with
    .text, .token_ids, .truncated); graded: the grader's BatchResult over all completions, flattened in that
    order; advantages: [len(prompts), G] or None (validation).

    >>> from types import SimpleNamespace as NS
    >>> from grader.reward import BatchResult
    >>> data = NS(lines=[1, 3])
    >>> prompts = [NS(index=0), NS(index=1)]
    >>> groups = [[NS(text="a", token_ids=[5], truncated=False)], [NS(text="b", token_ids=[6, 7], truncated=True)]]
    >>> graded = BatchResult("g", "string_check", [1.0, 0.0])
    >>> [(r["group"], r["line"], r["completion"], r["sub_rewards"]) for r in build_records(data, prompts, groups,
    ...                                                                                      graded, {1: 7})]
    [(7, 3, 'b', {'g': 0.0})]
    """
    subs = graded.sub_rewards
    out = []
    flat = 0
    for i, (prompt, group) in enumerate(zip(prompts, groups)):
        for k, c in enumerate(group):
            n = flat + k
            if i in take:
                errors = graded.errors.get(n) or {}
                out.append({
                    "group": take[i], "sample": k, "line": data.lines[prompt.index], "completion": c.text,
                    "reward": _number(graded.rewards[n]),
                    "sub_rewards": {name: _number(col[n]) for name, col in sorted(subs.items())},
                    "advantage": float(advantages[i, k]) if advantages is not None else None,
                    "errors": sorted(f for f, v in errors.items() if v is True),
                    "error_message": graded.messages.get(n),
                    "completion_tokens": len(c.token_ids), "truncated": bool(c.truncated),
                })
        flat += len(group)
    return out


def gather_records(records: list[dict], dist) -> list[dict]:
    """All ranks' records on rank 0, in rank order (a collective: every rank calls it); [] on the others."""
    if dist.world == 1:
        return records
    parts: list = [None] * dist.world
    torch.distributed.all_gather_object(parts, records)
    return [r for part in parts for r in part] if dist.main else []


def _number(v) -> float | None:
    return None if v is None else float(v)
