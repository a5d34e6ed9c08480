"""Synthetic Visual-RFT tasks (detection, grounding, fine-grained classification) on coloured shapes.

See `synthetic.shapes` for the row fields, the image and box conventions, the graders, and the hooks of
`Options` through which a study (research/scenes.py) changes a scene.
"""

from synthetic.shapes import (
    COLOURS,
    COORDINATES,
    RELATIONS,
    SHAPES,
    SIZES,
    TASKS,
    Obj,
    Options,
    Referent,
    answer_of,
    beyond,
    decode_data_url,
    generate,
    grader_spec,
    holds,
    make_row,
    referents,
    shape_box,
    to_jsonl,
    to_space,
    write_task,
)

__all__ = [
    "COLOURS", "COORDINATES", "RELATIONS", "SHAPES", "SIZES", "TASKS", "Obj", "Options", "Referent", "answer_of",
    "beyond", "decode_data_url", "generate", "grader_spec", "holds", "make_row", "referents", "shape_box", "to_jsonl",
    "to_space", "write_task",
]
