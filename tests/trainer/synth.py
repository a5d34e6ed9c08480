"""A tiny synthetic Visual-RFT dataset: coloured shapes on a plain background, as staged JSONL rows."""

from __future__ import annotations

import json
import random
from pathlib import Path

COLOURS = {"red": (220, 20, 20), "green": (20, 180, 40), "blue": (30, 60, 220), "yellow": (230, 210, 30)}
SYSTEM = ("A conversation between User and Assistant. The assistant first thinks about the reasoning process "
          "and then answers in <think> </think><answer> </answer> tags.")


def make_image(path: Path, colour: str, shape: str, box: list[int], size=(56, 56)) -> None:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", size, (245, 245, 245))
    draw = ImageDraw.Draw(img)
    if shape == "circle":
        draw.ellipse(box, fill=COLOURS[colour])
    else:
        draw.rectangle(box, fill=COLOURS[colour])
    img.save(path)


def make_rows(folder: Path, n: int, seed: int = 0, assistant: bool = False, data_url_every: int = 0) -> list[dict]:
    """n rows: system + user (image + question), reference fields `label` and `boxes`; optionally the answer."""
    import base64

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        colour = rng.choice(sorted(COLOURS))
        shape = rng.choice(["circle", "square"])
        x1, y1 = rng.randrange(2, 24), rng.randrange(2, 24)
        box = [x1, y1, x1 + rng.randrange(12, 28), y1 + rng.randrange(12, 28)]
        path = folder / f"img-{seed}-{i}.png"
        make_image(path, colour, shape, box)
        url = path.absolute().as_uri()
        if data_url_every and i % data_url_every == 0:
            url = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
        row = {
            "messages": [
                {"role": "system", "content": SYSTEM},
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": url}},
                        {"type": "text", "text": f"What colour is the {shape}? Give its box too."},
                    ],
                },
            ],
            "label": colour,
            "boxes": [box],
        }
        if assistant:
            row["messages"].append({"role": "assistant",
                                    "content": f"<think>The {shape} is {colour}.</think><answer>{colour}</answer>"})
        rows.append(row)
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


COLOUR_GRADER = {"type": "string_check", "name": "colour", "input": "{{sample.output_text}}",
                 "reference": "{{item.label}}", "operation": "ilike"}
MULTI_GRADER = {
    "type": "multi", "name": "visual",
    "graders": {
        "colour": COLOUR_GRADER,
        "box": {"type": "iou", "name": "box", "input": "{{sample.output_text}}", "reference": "{{item.boxes}}",
                "mode": "grounding"},
        "fuzzy": {"type": "text_similarity", "name": "fuzzy", "input": "{{sample.output_text}}",
                  "reference": "{{item.label}}", "evaluation_metric": "fuzzy_match"},
    },
    "calculate_output": "0.4 * colour + 0.3 * box + 0.3 * fuzzy",
}
