"""What serving takes from the API and gives back, so that the arrow runs one way (api -> serving): the settings
it reads, the two questions it asks about models, and the one error type it raises.

Serving imports nothing from `api`: the API passes its `Settings` (which has every field below), an object
that answers `ModelSource` (api/services/model_access.py), and maps `ServingError` to its error shape in its
one error mapper (api/errors.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Protocol, runtime_checkable


@runtime_checkable
class ServingConfig(Protocol):
    """The settings serving reads. Each is declared, documented and checked once, in api/settings.py; the API
    passes its settings object as it is, so a value changed at run time is seen at once."""

    home: Path
    serving_mode: Literal["managed", "external"]
    serving_external_urls: dict[str, str]
    serving_python: str | None
    serving_device: Literal["auto", "cpu", "cuda"]
    serving_dtype: str
    serving_max_model_len: int
    serving_max_num_seqs: int
    serving_kv_cache_gib: float | None
    serving_gpu_memory_utilization: float | None
    serving_tensor_parallel_size: int
    serving_enforce_eager: bool
    serving_single_process: bool
    serving_extra_args: list[str]
    serving_max_engines: int
    serving_max_n: int
    serving_max_memory_gib: float | None
    serving_engine_overhead_gib: float
    serving_idle_seconds: float
    serving_start_wait_seconds: float
    serving_start_timeout_seconds: float
    serving_read_timeout_seconds: float
    serving_prewarm: bool
    serving_poll_seconds: float
    max_images_per_row: int
    max_image_bytes: int
    max_image_pixels: int
    image_url_allowlist: list[str]
    image_fetch_timeout_seconds: float

    @property
    def cache_dir(self) -> Path: ...

    @property
    def tmp_dir(self) -> Path: ...


class ModelSource(Protocol):
    """What the manager asks the API about models when no request is there to ask for it: to start the engine
    of a newly succeeded job ahead of its first request. Both block (the manager calls them in a thread)."""

    def weights(self, project_id: str, model_id: str) -> Path:
        """The local weights folder of `model_id` (fine-tuned weights downloaded on first use); a `ServingError`,
        worded by the API, when the model has none."""
        ...

    def succeeded_since(self, since: int) -> list[tuple[str, str, str]]:
        """(job id, project id, fine-tuned model id) of every job that succeeded at or after `since` (unix time)."""
        ...


class ServingError(Exception):
    """An error of serving in OpenAI's terms, for the API's error mapper to send: `param` names the offending
    field, `type` None takes the API's type for the status, `headers` go out with it (`Retry-After`)."""

    def __init__(self, status_code: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None) -> None:  # noqa: A002
        super().__init__(message)
        self.status_code, self.message, self.param, self.code, self.type = status_code, message, param, code, type
        self.headers = headers
