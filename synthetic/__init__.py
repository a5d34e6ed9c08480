"""Synthetic Visual-RFT tasks (detection, grounding, fine-grained classification) on coloured shapes.

See `synthetic.shapes` for the row fields, the image and box conventions and the graders.
"""

from synthetic.shapes import (
    COLOURS,
    COORDINATES,
    DECOYS,
    RELATION_WORDS,
    SHAPES,
    SIZES,
    TASKS,
    Options,
    answer_of,
    generate,
    grader_spec,
    make_row,
    referents,
    to_jsonl,
    write_task,
)

__all__ = [
    "COLOURS", "COORDINATES", "DECOYS", "RELATION_WORDS", "SHAPES", "SIZES", "TASKS", "Options", "answer_of", "generate", "grader_spec",
    "make_row", "referents", "to_jsonl", "write_task",
]
