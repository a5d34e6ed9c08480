"""GET /v1/files/{file_id}/rows (our extension): rows of a JSONL file by line number, read from storage without
sending the file (the dashboard's inspector and playground read their rows so, not the whole file)."""

from __future__ import annotations

import json

import pytest

from tests.helpers import assert_openai_error

ROWS = [{"i": i, "text": "é" * i} for i in range(1, 8)]
# lines 1..9: a blank line after the 2nd row and another after the 5th (they count, as rollout records' `line`)
LINES = [ROWS[0], ROWS[1], None, ROWS[2], ROWS[3], ROWS[4], None, ROWS[5], ROWS[6]]


@pytest.fixture(scope="module")
def rows_file(deployment) -> str:  # noqa: ANN001
    body = "\n".join(json.dumps(r) if r else "" for r in LINES) + "\n"
    with deployment.http() as h:
        r = h.post("/files", files={"file": ("rows.jsonl", body.encode())}, data={"purpose": "assistants"})
        assert r.status_code == 200, r.text
        return r.json()["id"]


def _get(deployment, file_id: str, params: dict | list) -> dict:  # noqa: ANN001
    with deployment.http() as h:
        r = h.get(f"/files/{file_id}/rows", params=params)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and all(d["object"] == "file.row" for d in body["data"])
    return body


def test_the_lines_asked_for_in_their_order(deployment, rows_file: str) -> None:  # noqa: ANN001
    body = _get(deployment, rows_file, [("line", 9), ("line", 1), ("line", 4), ("line", 9)])
    assert [(d["line"], d["row"]) for d in body["data"]] == [(9, ROWS[6]), (1, ROWS[0]), (4, ROWS[2]), (9, ROWS[6])]
    assert body["has_more"] is False


def test_pages_of_rows_skip_blank_lines_and_end(deployment, rows_file: str) -> None:  # noqa: ANN001
    seen, after, pages = [], 0, 0
    while True:
        body = _get(deployment, rows_file, {"after": after, "limit": 3})
        pages += 1
        seen += [(d["line"], d["row"]) for d in body["data"]]
        if not body["has_more"]:
            break
        after = body["data"][-1]["line"]
    assert seen == [(n, r) for n, r in enumerate(LINES, 1) if r]
    assert pages == 3  # 3 + 3 + 1: the second page knows a row follows it
    assert _get(deployment, rows_file, {})["data"] == [{"object": "file.row", "line": n, "row": r}
                                                       for n, r in enumerate(LINES, 1) if r]
    assert _get(deployment, rows_file, {"after": 9}) == {"object": "list", "data": [], "has_more": False}


def test_a_line_past_the_end_or_blank_names_its_place(deployment, rows_file: str) -> None:  # noqa: ANN001
    with deployment.http() as h:
        assert_openai_error(h.get(f"/files/{rows_file}/rows", params=[("line", 1), ("line", 10)]), 400,
                            param="line[1]", contains="past the end")
        assert_openai_error(h.get(f"/files/{rows_file}/rows", params={"line": 3}), 400, param="line[0]",
                            contains="not a JSON object")


def test_a_deleted_file_has_no_rows(deployment) -> None:  # noqa: ANN001
    with deployment.http() as h:
        f = h.post("/files", files={"file": ("d.jsonl", b'{"a": 1}\n')}, data={"purpose": "assistants"}).json()
        assert h.get(f"/files/{f['id']}/rows", params={"line": 1}).json()["data"][0]["row"] == {"a": 1}
        assert h.delete(f"/files/{f['id']}").status_code == 200
        assert_openai_error(h.get(f"/files/{f['id']}/rows", params={"line": 1}), 404)
