"""The built-in grader types, one module each; importing this package registers them (grader/registry.py).

OpenAI's (openai-python `types/graders/*.py`): string_check, text_similarity, python, score_model, label_model,
multi. Ours: iou, format, classification. A new type is a new module here, added to the import below (the
order of registration is the order of the unions).
"""

from grader import registry
from grader.types import (  # noqa: F401, I001  # noqa: F401
    classification,
    format,
    iou,
    label_model,
    multi,
    python,
    score_model,
    string_check,
    text_similarity,
)

registry.resolve()
