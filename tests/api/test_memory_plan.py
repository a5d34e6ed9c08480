"""The memory plan at job creation (api/services/jobs.py over trainer/memory.py): a job that fits is created with
a "Memory plan" event; knobs left "auto" are chosen so that it fits, and stored in the job's hyperparameters; a
job that cannot fit is a 400 naming the hyperparameters, with what would fit, and nothing is stored."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.helpers import LiveServer, assert_openai_error, jsonl, rl_row

KEY = "sk-memory-plan"
# Qwen2.5-VL-3B's dimensions, as config.json gives them: the plan reads only the config, so no weights are needed.
QWEN25_VL_3B = {
    "model_type": "qwen2_5_vl", "architectures": ["Qwen2_5_VLForConditionalGeneration"], "vocab_size": 151936,
    "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36, "num_attention_heads": 16,
    "num_key_value_heads": 2, "max_position_embeddings": 128000, "tie_word_embeddings": True,
    "image_token_id": 151655, "video_token_id": 151656, "vision_start_token_id": 151652,
    "vision_config": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                      "out_hidden_size": 2048, "patch_size": 14, "spatial_merge_size": 2,
                      "temporal_patch_size": 2, "fullatt_block_indexes": [7, 15, 23, 31], "window_size": 112},
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    home = tmp_path_factory.mktemp("memory-plan")
    folder = home / "models" / "qwen2.5-vl-3b-shape"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(QWEN25_VL_3B))
    srv = LiveServer({"VRFT_API_KEY": KEY, "VRFT_ACCELERATOR": "cuda", "VRFT_DEVICE_MEMORY_GIB": "80",
                      "VRFT_TRAINER_NUM_RANKS": "1",
                      "VRFT_WORKER_TRAIN": "false", "VRFT_SERVING_PREWARM": "false"}, home).start()
    yield srv
    srv.stop()


def _client(server: LiveServer) -> httpx.Client:
    return httpx.Client(base_url=server.url + "/v1", headers={"Authorization": f"Bearer {KEY}"}, timeout=60)


def _training_file(h: httpx.Client) -> str:
    f = h.post("/files", files={"file": ("rl.jsonl", jsonl([rl_row(0), rl_row(1)]))},
               data={"purpose": "fine-tune"}).json()
    for _ in range(600):
        f = h.get(f"/files/{f['id']}").json()
        if f["status"] != "uploaded":
            break
    assert f["status"] == "processed", f
    return f["id"]


def _rft(**hp: object) -> dict:
    return {"type": "reinforcement", "reinforcement": {
        "grader": {"type": "string_check", "name": "s", "input": "{{sample.output_text}}",
                   "reference": "{{item.answer}}", "operation": "eq"},
        "hyperparameters": hp}}


def test_the_plan_picks_knobs_or_refuses(server: LiveServer, tmp_path: Path) -> None:
    with _client(server) as h:
        training = _training_file(h)
        model = "qwen2.5-vl-3b-shape"
        # full fine-tuning, every knob pinned off: about 3B params x 16 bytes of Adam state cannot fit an 80 GiB GPU
        pinned = {"gradient_checkpointing": False, "zero_stage": 0, "offload_optimizer": False,
                  "offload_params": False, "batch_size": 4, "num_generations": 8}
        before = h.get("/fine_tuning/jobs").json()["data"]
        r = h.post("/fine_tuning/jobs", json={"model": model, "training_file": training, "method": _rft(**pinned)})
        err = assert_openai_error(r, 400, param="method.reinforcement.hyperparameters", contains="GiB")
        assert err["code"] == "insufficient_memory" and "use " in err["message"], err
        assert h.get("/fine_tuning/jobs").json()["data"] == before  # nothing stored

        # the same job with its knobs left to the service: the plan chooses them, the job is stored with them
        r = h.post("/fine_tuning/jobs", json={"model": model, "training_file": training,
                                              "method": _rft(batch_size=4, num_generations=8)})
        assert r.status_code == 200, r.text
        job = r.json()
        chosen = job["method"]["reinforcement"]["hyperparameters"]
        events = h.get(f"/fine_tuning/jobs/{job['id']}/events", params={"limit": 100}).json()["data"]
        plan = [e for e in events if e["message"].startswith("Memory plan: ")]
        assert len(plan) == 1 and "80.0 GiB available" in plan[0]["message"], events
        assert plan[0]["data"]["memory_plan"]["total"] <= 80
        # at least one memory-saving knob was turned on (which ones is the planner's choice, tested in
        # tests/trainer/test_memory.py)
        savers = {k: chosen.get(k) for k in ("gradient_checkpointing", "offload_optimizer", "offload_params")}
        assert any(savers.values()) or chosen.get("zero_stage") in (2, 3), chosen
        h.post(f"/fine_tuning/jobs/{job['id']}/cancel")
