"""The API with its serving manager in a process of its own, engines from tests/serving/fake_vllm.py, for tests
that kill the API outright.

    python tests/serving/api_process.py HOME PORT

HOME holds a `models/tiny-qwen2-vl` folder and the database with a project and key (the test makes them)."""

from __future__ import annotations

import sys
from pathlib import Path

import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from api.settings import Settings  # noqa: E402
from tests.serving import test_faults  # noqa: E402
from tests.serving.support import serving_app  # noqa: E402

if __name__ == "__main__":
    import serving.engines

    serving.engines.engine_command = test_faults.fake_command
    home, port = Path(sys.argv[1]), int(sys.argv[2])
    settings = Settings(home=home, serving_prewarm=False, serving_start_wait_seconds=30)
    uvicorn.run(serving_app(settings), host="127.0.0.1", port=port, log_level="warning")
