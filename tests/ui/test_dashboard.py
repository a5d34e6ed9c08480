"""The dashboard in headless Chromium against a live server that trains the tiny model: sign-in, a finished RFT
job's curves equal to its events, the rollout inspector's image, boxes and scores equal to the records and
their rows, its filter, comparing two evaluations, cancel, pause and resume from the page, and another
project's job never shown. Screenshots: see conftest.py."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

import synthetic
from grader.boxes import parse_boxes
from tests.ui.conftest import UI

WAIT = 60


def wait_for(driver, css: str, timeout: float = WAIT):  # noqa: ANN001, ANN201
    return WebDriverWait(driver, timeout).until(lambda d: d.find_elements(By.CSS_SELECTOR, css) or None)[0]


def live_attribute(driver, css: str, name: str) -> str | None:  # noqa: ANN001
    """An attribute read in one script call: on a page that polls, the element found a moment ago may have been
    redrawn since (a stale reference), the selector's current element may not."""
    return driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e && e.getAttribute(arguments[1]);", css, name)


def live_click(driver, element_id: str) -> None:  # noqa: ANN001
    """Click the element with this id, finding it again if a poll redrew it between the find and the click."""
    WebDriverWait(driver, 10, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: d.find_element(By.ID, element_id).click() or True)


def fetched(driver, part: str) -> list[str]:  # noqa: ANN001
    """The URLs this page has requested that contain `part` (the browser's resource timing entries)."""
    return driver.execute_script(
        "return performance.getEntriesByType('resource').map((e) => e.name).filter((n) => n.includes(arguments[0]))",
        part)


def sign_in(driver, ui: UI, key: str | None = None) -> None:  # noqa: ANN001
    driver.get(ui.url + "/dashboard#/")
    driver.execute_script("sessionStorage.clear()")
    driver.refresh()
    wait_for(driver, "#api-key").send_keys(key or ui.key)
    driver.find_element(By.ID, "sign-in").click()
    wait_for(driver, "#jobs")


def shot(driver, artifacts: Path, name: str) -> None:  # noqa: ANN001
    path = artifacts / f"{name}.png"
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")


def open_tab(driver, ui: UI, job_id: str, tab: str) -> None:  # noqa: ANN001
    driver.get(f"{ui.url}/dashboard#/jobs/{job_id}/{tab}")
    driver.refresh()  # a hash change alone keeps the page: render this route from the start
    wait_for(driver, "#job-status")


def all_events(ui: UI, job_id: str, key: str | None = None) -> list[dict]:
    with ui.http(key) as c:
        return c.get(f"/fine_tuning/jobs/{job_id}/events", params={"limit": 10000}).json()["data"][::-1]


def all_rollouts(ui: UI, job_id: str, **params) -> list[dict]:
    with ui.http() as c:
        return c.get(f"/fine_tuning/jobs/{job_id}/rollouts", params={"limit": 10000, **params}).json()["data"]


def file_rows(ui: UI, file_id: str) -> dict[int, dict]:
    with ui.http() as c:
        text = c.get(f"/files/{file_id}/content").text
    return {n: json.loads(line) for n, line in enumerate(text.split("\n"), 1) if line.strip()}


def test_page_is_self_contained(ui: UI, browser, artifacts: Path) -> None:  # noqa: ANN001
    """Served by the package with a CSP of this server only; the page loads nothing from elsewhere."""
    import httpx

    r = httpx.get(ui.url + "/dashboard")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert httpx.get(ui.url + "/dashboard/app.js").headers["content-type"].startswith("text/javascript")
    assert httpx.get(ui.url + "/dashboard/conftest.py").status_code == 404
    browser.get(ui.url + "/dashboard")
    wait_for(browser, "#api-key")
    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(u.startswith(ui.url + "/") for u in loaded), loaded


def test_sign_in(ui: UI, finished_job: dict, browser, artifacts: Path) -> None:  # noqa: ANN001
    browser.get(ui.url + "/dashboard")
    browser.execute_script("sessionStorage.clear()")
    browser.refresh()
    wait_for(browser, "#api-key").send_keys("sk-not-a-key")
    browser.find_element(By.ID, "sign-in").click()
    WebDriverWait(browser, WAIT).until(lambda d: "refused" in d.find_element(By.ID, "sign-in-error").text)
    assert not browser.find_elements(By.CSS_SELECTOR, "#jobs")
    shot(browser, artifacts, "01-sign-in-refused")

    sign_in(browser, ui)
    assert browser.execute_script("return sessionStorage.getItem('vrft.apiKey')") == ui.key
    row = wait_for(browser, f'#jobs tr[data-job-id="{finished_job["id"]}"]')
    assert row.get_attribute("data-status") == "succeeded"
    WebDriverWait(browser, WAIT).until(lambda d: row.get_attribute("data-progress") == "1.0000")
    shot(browser, artifacts, "02-jobs")

    browser.find_element(By.ID, "sign-out").click()
    wait_for(browser, "#api-key")
    assert browser.execute_script("return sessionStorage.getItem('vrft.apiKey')") is None


def test_curves_equal_the_events(ui: UI, finished_job: dict, browser, artifacts: Path) -> None:  # noqa: ANN001
    sign_in(browser, ui)
    open_tab(browser, ui, finished_job["id"], "overview")
    wait_for(browser, "figure.chart")
    plotted = {
        (fig.get_attribute("data-chart"), g.get_attribute("data-series")): json.loads(g.get_attribute("data-points"))
        for fig in browser.find_elements(By.CSS_SELECTOR, "figure.chart")
        for g in fig.find_elements(By.CSS_SELECTOR, "g.series")
    }
    metrics = [e["data"] for e in all_events(ui, finished_job["id"]) if e["type"] == "metrics"]
    assert [m["step"] for m in metrics] == [1, 2]

    def series(f) -> list:  # noqa: ANN001
        return [[m["step"], f(m)] for m in metrics if isinstance(f(m), (int, float))]

    def grader(split: str, name: str):  # noqa: ANN202
        return lambda m: next((g.get(f"{split}_reward_mean") for g in m["scores"]["graders"] if g["name"] == name),
                              None)

    expected = {
        ("reward", "train_reward_mean"): series(lambda m: m["scores"]["train_reward_mean"]),
        ("reward", "valid_reward_mean"): series(lambda m: m["scores"].get("valid_reward_mean")),
        **{("reward_by_grader", f"{split}:{n}"): series(grader(split, n))
           for n in ("format", "iou") for split in ("train", "valid")},
        **{(chart, f"train.{k}"): series(lambda m, k=k: m["train"][k]) for chart, k in [
            ("kl", "kl"), ("clip_ratio", "clip_ratio"), ("frac_reward_zero_std", "frac_reward_zero_std"),
            ("completion_length", "completion_length_mean"), ("completion_length", "completion_length_max"),
            ("learning_rate", "learning_rate"), ("loss", "loss"), ("reward_std", "reward_std"),
            ("reward_std", "reward_std_within_groups"), ("truncated_ratio", "truncated_ratio")]},
    }
    assert all(len(v) == 2 for v in expected.values()), expected
    assert plotted == expected
    # every plotted point is drawn
    for g in browser.find_elements(By.CSS_SELECTOR, "g.series"):
        assert len(g.find_elements(By.TAG_NAME, "circle")) == len(json.loads(g.get_attribute("data-points")))
    shot(browser, artifacts, "03-curves")

    open_tab(browser, ui, finished_job["id"], "events")
    shown = [r.get_attribute("data-event-id") for r in wait_for(browser, "#events").find_elements(By.CSS_SELECTOR,
                                                                                               "tbody tr")]
    assert shown == [e["id"] for e in all_events(ui, finished_job["id"])][::-1]

    open_tab(browser, ui, finished_job["id"], "checkpoints")
    with ui.http() as c:
        ckpts = c.get(f"/fine_tuning/jobs/{finished_job['id']}/checkpoints").json()["data"]
    table = wait_for(browser, "#checkpoints")
    assert sorted(int(r.get_attribute("data-step")) for r in table.find_elements(By.CSS_SELECTOR, "tbody tr")) == \
        sorted(c["step_number"] for c in ckpts)
    best = max(ckpts, key=lambda c: c["metrics"]["valid_reward_mean"])
    [marked] = table.find_elements(By.CSS_SELECTOR, 'tr[data-best="true"]')
    assert int(marked.get_attribute("data-step")) == best["step_number"]
    shot(browser, artifacts, "04-checkpoints")


def _shown_ids(browser) -> list[str]:  # noqa: ANN001
    WebDriverWait(browser, WAIT).until(
        lambda d: d.find_element(By.ID, "rollouts").get_attribute("data-ready") == "true")
    return [c.get_attribute("data-rollout-id") for c in browser.find_elements(By.CSS_SELECTOR, "#rollouts .rollout")]


def _pixel_box(box: list[float]) -> list[float]:
    x1, y1, x2, y2 = box
    return [round(v, 4) for v in (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))]


def test_inspector_draws_boxes_and_scores(ui: UI, finished_job: dict, browser, artifacts: Path) -> None:  # noqa: ANN001
    sign_in(browser, ui)
    open_tab(browser, ui, finished_job["id"], "rollouts")
    records = {r["id"]: r for r in all_rollouts(ui, finished_job["id"])}
    assert records and set(_shown_ids(browser)) == set(records)
    rows = {fid: file_rows(ui, fid) for fid in {r["file_id"] for r in records.values()}}
    boxes_seen = 0
    for card in browser.find_elements(By.CSS_SELECTOR, "#rollouts .rollout"):
        r = records[card.get_attribute("data-rollout-id")]
        row = rows[r["file_id"]][r["line"]]
        assert card.find_element(By.CSS_SELECTOR, "pre.completion").text == r["completion"]
        chips = {c.get_attribute("data-grader"): c.get_attribute("data-score")
                 for c in card.find_elements(By.CSS_SELECTOR, ".score[data-grader]")}
        assert {k: float(v) for k, v in chips.items()} == r["sub_rewards"]
        assert float(card.find_element(By.CSS_SELECTOR, ".score.reward").get_attribute("data-score")) == r["reward"]
        adv = card.find_element(By.CSS_SELECTOR, ".score.advantage").get_attribute("data-advantage")
        assert (None if adv == "null" else float(adv)) == r["advantage"]
        # the row's image, its reference boxes and the completion's boxes as the iou grader parses them
        fig = card.find_element(By.CSS_SELECTOR, ".figure")
        WebDriverWait(browser, WAIT).until(lambda d: fig.get_attribute("data-drawn") == "true")
        img = fig.find_element(By.TAG_NAME, "img")
        assert browser.execute_script("return arguments[0].naturalWidth", img) == row["width"]
        refs = [json.loads(e.get_attribute("data-box")) for e in fig.find_elements(By.CSS_SELECTOR, "rect.ref-box")]
        preds = [json.loads(e.get_attribute("data-box")) for e in fig.find_elements(By.CSS_SELECTOR, "rect.pred-box")]
        assert refs == [_pixel_box(b) for b in row["boxes"]]
        parsed = [_pixel_box(b) for b, _ in (parse_boxes(r["completion"], "json") or [])]
        assert preds == [b for i, b in enumerate(parsed) if b not in parsed[:i]]  # the grader drops repeats
        boxes_seen += len(preds)
    assert boxes_seen > 0  # the constrained samples do carry boxes
    assert not fetched(browser, "/content")  # the rows came by line (GET /files/{id}/rows), not the whole file
    shot(browser, artifacts, "05-rollout-inspector")


def test_auto_box_format_is_drawn_in_the_convention_the_job_resolved(ui: UI, finished_job: dict,
                                                                      browser) -> None:  # noqa: ANN001
    """The page asks the server for the boxes (POST /files/{id}/boxes) with the job's box convention: an IoU
    grader's input_format "auto" read as the start event says the model answers (here Qwen2.5-VL's: pixels of the
    resized image), not as the default norm1000; the dataset's boxes stay norm1000."""
    sign_in(browser, ui)
    open_tab(browser, ui, finished_job["id"], "overview")
    fid = finished_job["validation_file"]
    row = file_rows(ui, fid)[1]
    spec = {"type": "multi", "name": "m", "calculate_output": "iou", "graders": {
        "iou": {"type": "iou", "name": "iou", "input_format": "auto"},
        "kept": {"type": "iou", "name": "kept", "input_format": {"box_format": "xywh", "coordinates": "norm1"}}}}
    convention = {"box_format": "xyxy", "coordinates": "pixel", "resize": {"factor": 28}}
    sample = "<answer>[28, 56, 84, 112]</answer>"
    got = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "boxesOf(arguments[0], 1, arguments[1], arguments[2], arguments[3]).then(done, (e) => done(String(e)));",
        fid, sample, spec, convention)
    by = {g["grader"]: g for g in got}
    from grader.images import smart_resize

    h, w = smart_resize(row["height"], row["width"], 28)
    assert by["iou"]["predicted"] == [{"box": [28 / w, 56 / h, 84 / w, 112 / h], "confidence": 1.0}]
    assert by["iou"]["reference"] == [[v / 1000 for v in b] for b in row["boxes"]]
    assert by["kept"]["predicted"] == [{"box": [28.0, 56.0, 112.0, 168.0], "confidence": 1.0}]  # xywh, as declared


def test_inspector_filter(ui: UI, finished_job: dict, browser, artifacts: Path) -> None:  # noqa: ANN001
    sign_in(browser, ui)
    open_tab(browser, ui, finished_job["id"], "rollouts")
    records = all_rollouts(ui, finished_job["id"])
    assert len(_shown_ids(browser)) == len(records)

    browser.find_element(By.ID, "preset-format-no-iou").click()  # "format = 1 but iou = 0"
    want = {r["id"] for r in records if r["sub_rewards"]["format"] == 1 and r["sub_rewards"]["iou"] == 0}
    assert want  # the random model's boxes mostly miss
    WebDriverWait(browser, WAIT).until(lambda d: set(_shown_ids(d)) == want)
    shot(browser, artifacts, "06-filter-format-but-no-iou")

    browser.find_element(By.ID, "f-max-iou").clear()
    browser.find_element(By.ID, "f-min-iou").send_keys("0.000001")
    hits = {r["id"] for r in records if r["sub_rewards"]["format"] == 1 and r["sub_rewards"]["iou"] >= 0.000001}
    WebDriverWait(browser, WAIT).until(lambda d: set(_shown_ids(d)) == hits)

    # the split selector asks the API for one split; sorting by reward puts the best first
    browser.find_element(By.ID, "f-min-iou").clear()
    browser.find_element(By.ID, "f-min-format").clear()
    browser.find_element(By.CSS_SELECTOR, '#f-split option[value="validation"]').click()
    valid = [r for r in records if r["split"] == "validation"]
    WebDriverWait(browser, WAIT).until(lambda d: set(_shown_ids(d)) == {r["id"] for r in valid})
    browser.find_element(By.CSS_SELECTOR, '#f-sort option[value="reward-desc"]').click()
    WebDriverWait(browser, WAIT).until(lambda d: [
        float(c.get_attribute("data-reward")) for c in d.find_elements(By.CSS_SELECTOR, "#rollouts .rollout")
    ] == sorted((r["reward"] for r in valid), reverse=True))


def test_compare_two_evaluations(ui: UI, finished_job: dict, browser, artifacts: Path) -> None:  # noqa: ANN001
    sign_in(browser, ui)
    open_tab(browser, ui, finished_job["id"], "compare")
    grid = wait_for(browser, "#compare .compare")
    valid = all_rollouts(ui, finished_job["id"], split="validation")
    steps = sorted({r["step"] for r in valid})
    assert len(steps) == 2
    assert browser.find_element(By.ID, "cmp-a").get_attribute("value") == str(steps[0])
    assert browser.find_element(By.ID, "cmp-b").get_attribute("value") == str(steps[-1])
    lines = [int(e.get_attribute("data-line")) for e in grid.find_elements(By.CSS_SELECTOR, "[data-line]")]
    assert lines == sorted({r["line"] for r in valid})
    assert {e.get_attribute("data-rollout-id") for e in grid.find_elements(By.CSS_SELECTOR, "[data-rollout-id]")} \
        == {r["id"] for r in valid}
    shot(browser, artifacts, "07-compare")


def test_cancel_from_the_page(ui: UI, finished_job: dict, browser, artifacts: Path) -> None:  # noqa: ANN001
    """While the job trains, the open page draws its first steps by polling (no reload); then Cancel stops it."""
    job_id = ui.box_job(steps=50, seed=4)
    sign_in(browser, ui)
    open_tab(browser, ui, job_id, "overview")
    series = 'figure.chart[data-chart="reward"] g.series[data-series="train_reward_mean"]'
    wait_for(browser, series, 300)
    plotted = json.loads(live_attribute(browser, series, "data-points"))
    train = [[e["data"]["step"], e["data"]["scores"]["train_reward_mean"]]
             for e in all_events(ui, job_id) if e["type"] == "metrics"]
    assert plotted and plotted == train[:len(plotted)]
    assert live_attribute(browser, "#cancel", "disabled") is None
    live_click(browser, "cancel")
    WebDriverWait(browser, 10).until(lambda d: d.switch_to.alert).accept()
    WebDriverWait(browser, WAIT).until(lambda d: live_attribute(d, "#job-status", "data-status") == "cancelled")
    # the click's own redraw may come after the poll's: wait for the page to settle on a disabled button
    WebDriverWait(browser, 10).until(lambda d: live_attribute(d, "#cancel", "disabled") is not None)
    with ui.http() as c:
        assert c.get(f"/fine_tuning/jobs/{job_id}").json()["status"] == "cancelled"
    shot(browser, artifacts, "08-cancelled")


def test_pause_and_resume_from_the_page(ui: UI, finished_job: dict, browser, artifacts: Path) -> None:  # noqa: ANN001
    """Pause, enabled only while the job runs, stops it at a step boundary (the page shows it paused, Pause off and
    Resume on); Resume continues it from its checkpoint to the end, each step trained once, the page following."""
    job_id = ui.box_job(steps=30, seed=5)
    sign_in(browser, ui)
    open_tab(browser, ui, job_id, "overview")
    assert live_attribute(browser, "#resume", "disabled") is not None
    wait_for(browser, 'figure.chart[data-chart="reward"] g.series[data-series="train_reward_mean"]', 300)
    live_click(browser, "pause")
    WebDriverWait(browser, WAIT).until(lambda d: live_attribute(d, "#job-status", "data-status") == "paused")
    WebDriverWait(browser, 10).until(lambda d: live_attribute(d, "#resume", "disabled") is None)
    assert live_attribute(browser, "#pause", "disabled") is not None
    ui.wait(job_id, lambda j: any(e["message"].startswith("Training stopped at step") for e in all_events(ui, job_id)),
            timeout=120)
    with ui.http() as c:
        assert c.get(f"/fine_tuning/jobs/{job_id}/checkpoints").json()["data"]
    shot(browser, artifacts, "08-paused")
    paused_at = max(e["data"]["step"] for e in all_events(ui, job_id) if e["type"] == "metrics")
    live_click(browser, "resume")
    WebDriverWait(browser, 600).until(lambda d: live_attribute(d, "#job-status", "data-status") == "succeeded")
    steps = [e["data"]["step"] for e in all_events(ui, job_id) if e["type"] == "metrics"]
    assert paused_at < steps[-1] and steps == list(range(1, steps[-1] + 1)), (paused_at, steps)
    WebDriverWait(browser, 10).until(lambda d: live_attribute(d, "#resume", "disabled") is not None)
    shot(browser, artifacts, "08-resumed-to-the-end")


def test_another_projects_job_is_never_shown(ui: UI, finished_job: dict, browser, artifacts: Path) -> None:  # noqa: ANN001
    with ui.http(ui.other_key) as c:
        row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
        other_file = ui.upload([row], "other.jsonl", ui.other_key)
        other = c.post("/fine_tuning/jobs", json={"model": "tiny-qwen2-vl", "training_file": other_file}).json()
        assert c.post(f"/fine_tuning/jobs/{other['id']}/cancel").status_code == 200

    sign_in(browser, ui)
    wait_for(browser, f'#jobs tr[data-job-id="{finished_job["id"]}"]')
    ids = [r.get_attribute("data-job-id") for r in browser.find_elements(By.CSS_SELECTOR, "#jobs tr[data-job-id]")]
    assert other["id"] not in ids
    browser.get(f"{ui.url}/dashboard#/jobs/{other['id']}/overview")
    browser.refresh()
    WebDriverWait(browser, WAIT).until(lambda d: "No such job" in d.find_element(By.ID, "app").text)
    assert not browser.find_elements(By.CSS_SELECTOR, "#job-status, #charts, #rollouts")
    for tab in ("rollouts", "compare"):  # nothing of it leaks through the inspector either
        browser.get(f"{ui.url}/dashboard#/jobs/{other['id']}/{tab}")
        browser.refresh()
        WebDriverWait(browser, WAIT).until(lambda d: "No such job" in d.find_element(By.ID, "app").text)
    shot(browser, artifacts, "09-other-project-job")

    sign_in(browser, ui, ui.other_key)  # and the other way round
    wait_for(browser, f'#jobs tr[data-job-id="{other["id"]}"]')
    ids = [r.get_attribute("data-job-id") for r in browser.find_elements(By.CSS_SELECTOR, "#jobs tr[data-job-id]")]
    assert ids == [other["id"]]


def test_grader_playground(ui: UI, finished_job: dict, browser, artifacts: Path) -> None:  # noqa: ANN001
    """The job's grader picked from the job, run on 3 rows of its training file with one fixed sample (the first
    row's own box): each row's reward is graders/run's, and the first row's is 1."""
    sign_in(browser, ui)
    browser.get(ui.url + "/dashboard#/playground")
    browser.refresh()
    wait_for(browser, f'#pg-job option[value="{finished_job["id"]}"]').click()
    WebDriverWait(browser, WAIT).until(lambda d: d.find_element(By.ID, "pg-file").get_attribute("value")
                                       == finished_job["training_file"])
    rows = file_rows(ui, finished_job["training_file"])
    first = rows[1]
    sample = json.dumps({"bbox_2d": first["boxes"][0]})
    browser.find_element(By.CSS_SELECTOR, '#pg-source option[value="text"]').click()
    n = browser.find_element(By.ID, "pg-n")
    n.clear()
    n.send_keys("3")
    browser.find_element(By.ID, "pg-text").send_keys(sample)
    browser.find_element(By.ID, "pg-run").click()
    results = wait_for(browser, "#pg-results")
    cards = results.find_elements(By.CSS_SELECTOR, ".rollout")
    assert [int(c.get_attribute("data-line")) for c in cards] == [1, 2, 3]
    with ui.http() as c:
        want = [c.post("/fine_tuning/alpha/graders/run", json={
            "grader": finished_job["method"]["reinforcement"]["grader"], "model_sample": sample, "item": rows[i]})
            .json()["reward"] for i in (1, 2, 3)]
    assert [float(c.get_attribute("data-reward")) for c in cards] == want
    assert want[0] == 1.0  # the first row's own box: full IoU and the right form
    assert fetched(browser, "/rows?after=0&limit=3") and not fetched(browser, "/content")
    shot(browser, artifacts, "10-grader-playground")


def test_grader_playground_with_model_samples(ui: UI, finished_job: dict, browser, artifacts: Path) -> None:  # noqa: ANN001
    """Samples from the job's fine-tuned model (through /v1/chat/completions), each graded as graders/run grades it."""
    sign_in(browser, ui)
    browser.get(ui.url + "/dashboard#/playground")
    browser.refresh()
    wait_for(browser, f'#pg-job option[value="{finished_job["id"]}"]').click()
    wait_for(browser, f'#pg-model option[value="{finished_job["fine_tuned_model"]}"]').click()
    browser.find_element(By.CSS_SELECTOR, '#pg-source option[value="model"]').click()
    for field, value in (("pg-n", "2"), ("pg-max-tokens", "16")):
        browser.find_element(By.ID, field).clear()
        browser.find_element(By.ID, field).send_keys(value)
    browser.find_element(By.ID, "pg-run").click()
    results = WebDriverWait(browser, 300).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#pg-results, #pg-out .error"))[0]
    assert results.get_attribute("id") == "pg-results", results.text
    rows = file_rows(ui, finished_job["training_file"])
    cards = results.find_elements(By.CSS_SELECTOR, ".rollout")
    assert [int(c.get_attribute("data-line")) for c in cards] == [1, 2]
    with ui.http() as c:
        for card in cards:
            sample = browser.execute_script("return arguments[0].querySelector('pre.completion').textContent", card)
            want = c.post("/fine_tuning/alpha/graders/run", json={
                "grader": finished_job["method"]["reinforcement"]["grader"], "model_sample": sample,
                "item": rows[int(card.get_attribute("data-line"))]}).json()["reward"]
            assert float(card.get_attribute("data-reward")) == want
    shot(browser, artifacts, "11-grader-playground-model")


def test_sft_curves_equal_the_events(ui: UI, browser, artifacts: Path) -> None:  # noqa: ANN001
    """A supervised job's page draws its loss and token accuracy, train and validation, as its events have them."""
    train = ui.upload(synthetic.generate("classification", 6, seed=4, short=True, sft=True), "sft.jsonl")
    valid = ui.upload(synthetic.generate("classification", 2, seed=5, short=True, sft=True, split="valid"), "sv.jsonl")
    method = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 3}}}
    with ui.http() as c:
        job = c.post("/fine_tuning/jobs", json={"model": "tiny-qwen2-vl", "training_file": train,
                                                "validation_file": valid, "method": method}).json()
    assert ui.wait(job["id"])["status"] == "succeeded"
    sign_in(browser, ui)
    open_tab(browser, ui, job["id"], "overview")
    wait_for(browser, "figure.chart")
    plotted = {
        (fig.get_attribute("data-chart"), g.get_attribute("data-series")): json.loads(g.get_attribute("data-points"))
        for fig in browser.find_elements(By.CSS_SELECTOR, "figure.chart")
        for g in fig.find_elements(By.CSS_SELECTOR, "g.series")
    }
    metrics = [e["data"] for e in all_events(ui, job["id"]) if e["type"] == "metrics"]
    assert len(metrics) == 2
    charts = {"train_loss": "loss", "valid_loss": "loss", "full_valid_loss": "loss", "learning_rate": "learning_rate",
              "train_mean_token_accuracy": "accuracy", "valid_mean_token_accuracy": "accuracy",
              "full_valid_mean_token_accuracy": "accuracy"}
    expected = {(chart, k): [[m["step"], m[k]] for m in metrics if isinstance(m.get(k), (int, float))]
                for k, chart in charts.items()}
    assert plotted == {k: v for k, v in expected.items() if v}
    assert {"train_loss", "valid_loss", "train_mean_token_accuracy"} <= {k for _, k in plotted}
    shot(browser, artifacts, "12-sft-curves")


def test_an_image_on_another_host_is_named_not_fetched(ui: UI, browser, artifacts: Path) -> None:  # noqa: ANN001
    """A row whose image is an http(s) URL elsewhere: the page's Content-Security-Policy keeps the browser from
    fetching it (nothing but this server is contacted: the other host sees no request), and the figure says why
    it shows no image."""
    asked: list[str] = []

    class Host(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            asked.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args) -> None:  # noqa: ANN002
            pass

    host = ThreadingHTTPServer(("127.0.0.1", 0), Host)
    threading.Thread(target=host.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{host.server_address[1]}/cat.png"
        row = {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is it?"},
                                                         {"type": "image_url", "image_url": {"url": url}}]},
                            {"role": "assistant", "content": "a cat"}], "solution": "a cat"}
        file_id = ui.upload([row], "remote-image.jsonl")
        sign_in(browser, ui)
        browser.get(ui.url + "/dashboard#/playground")
        browser.refresh()
        wait_for(browser, f'#pg-file option[value="{file_id}"]').click()
        browser.find_element(By.CSS_SELECTOR, '#pg-source option[value="assistant"]').click()
        browser.find_element(By.ID, "pg-run").click()
        card = wait_for(browser, "#pg-results .rollout")
        assert float(card.get_attribute("data-reward")) == 1.0  # graded all the same
        WebDriverWait(browser, WAIT).until(lambda d: live_attribute(d, "#pg-results .figure", "data-drawn") == "error")
        assert f"the image at {url} is not on this server" in card.text
        assert asked == []
        shot(browser, artifacts, "13-image-elsewhere")
    finally:
        host.shutdown()
