"""A straight port of Visual-RFT's detection reward loop (open_r1 grpo.py: extract_bbox, remove_duplicates,
sort_and_calculate_iou, compute_reward_iou_v2 and the confidence reward), pure Python, one sample at a time,
without the math_verify step. The reference our batched `iou` grader is checked against and benchmarked on.
"""

from __future__ import annotations

import json
import re


def extract_bbox(response: str):
    if "<answer>" not in response:
        return None
    start = response.find("<answer>") + len("<answer>")
    end = response.find("</answer>")
    body = response[start : end if end != -1 else len(response)]
    if not body.endswith("]"):  # truncated output: keep the complete boxes
        body = body.rsplit("},", 1)[0] + "}]"
    try:
        return json.loads(body.replace("'", '"'))
    except json.JSONDecodeError:
        return None


def calculate_iou(a, b):
    xi1, yi1 = max(a[0], b[0]), max(a[1], b[1])
    xi2, yi2 = min(a[2], b[2]), min(a[3], b[3])
    if xi2 <= xi1 or yi2 <= yi1:
        return 0.0
    inter = (xi2 - xi1) * (yi2 - yi1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def sort_and_calculate_iou(gt, preds, iou_threshold=0.5):
    results, matched = [], set()
    for p in sorted(preds, key=lambda x: x["Confidence"], reverse=True):
        best, best_i = 0, -1
        for i, g in enumerate(gt):
            if i not in matched:
                v = calculate_iou(g["Position"], p["Position"])
                if v > best:
                    best, best_i = v, i
        if best > iou_threshold:
            results.append((best, p["Confidence"]))
            matched.add(best_i)
        else:
            results.append((0, p["Confidence"]))
    return results


def remove_duplicates(boxes):
    seen, out = set(), []
    for b in boxes:
        key = tuple(b["Position"])
        if key not in seen:
            seen.add(key)
            out.append(b)
    return out


def compute_reward_iou_v2(results, len_gt):
    total = sum(r[0] for r in results)
    return total / len_gt if len_gt >= len(results) else total / len(results)


def compute_reward_confidence(results):
    total = 0.0
    for v, c in results:
        total += (1 - v) * (1 - c) if v == 0 else c
    return total / len(results)


def _student_boxes(content: str):
    m = re.search(r"<answer>(.*?)</answer>", content)
    answer = "<answer>" + (m.group(1).strip() if m else content.strip()) + "</answer>"
    answer = answer.replace("[[", "[").replace("]]", "]").replace("\n", "")
    return extract_bbox(answer)


def accuracy_reward_iou(contents, solutions):
    rewards = []
    for content, sol in zip(contents, solutions):
        reward = 0.0
        try:
            gt = extract_bbox(sol.strip())
            pred = _student_boxes(content)
            if pred is not None and type(pred[0]) is dict:
                pred = remove_duplicates(pred)
                reward = min(1.0, compute_reward_iou_v2(sort_and_calculate_iou(gt, pred), len(gt)))
        except Exception:
            pass
        rewards.append(reward)
    return rewards


def accuracy_reward_confidence(contents, solutions):
    rewards = []
    for content, sol in zip(contents, solutions):
        reward = 0.0
        try:
            gt = extract_bbox(sol.strip())
            pred = _student_boxes(content)
            if pred is not None and type(pred[0]) is dict:
                pred = remove_duplicates(pred)
                reward = min(1.0, compute_reward_confidence(sort_and_calculate_iou(gt, pred)))
        except Exception:
            pass
        rewards.append(reward)
    return rewards


def make_detection_samples(n: int, boxes: int = 10, seed: int = 0):
    """(completions, solutions) like Visual-RFT's COCO task: 0-1000 boxes, Position/Confidence lists,
    predictions = jittered ground truth plus some misses and false positives."""
    import random

    rng = random.Random(seed)
    contents, sols = [], []
    for _ in range(n):
        gt = []
        for _ in range(boxes):
            x, y = rng.randint(0, 800), rng.randint(0, 800)
            gt.append([x, y, x + rng.randint(60, 200), y + rng.randint(60, 200)])
        preds = []
        for g in gt:
            if rng.random() < 0.15:
                continue  # a miss
            j = [max(0, v + rng.randint(-25, 25)) for v in g]
            preds.append({"Position": j, "Confidence": round(rng.random(), 2)})
        while len(preds) < boxes:  # false positives
            x, y = rng.randint(0, 800), rng.randint(0, 800)
            preds.append({"Position": [x, y, x + 50, y + 60], "Confidence": round(rng.random(), 2)})
        contents.append("<think>I see them.</think><answer>" + str(preds) + "</answer>")
        sols.append("<answer>" + str([{"Position": g, "Confidence": 1} for g in gt]) + "</answer>")
    return contents, sols
