"""The built-in grader types, one module each; importing this package registers them (grader/registry.py).

OpenAI's (openai-python `types/graders/*.py`): string_check, text_similarity, python, score_model, label_model,
multi. Ours: iou, format, classification. A new type is a new module here, added to the import below (the
order of registration is the order of the unions).
"""

from grader import registry
from grader.types import string_check, text_similarity, python, score_model, label_model, multi  # noqa: F401, I001
from grader.types import iou, format, classification  # noqa: F401

registry.resolve()
