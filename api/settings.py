"""The one settings class, read from the environment at start and validated there."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the service. Each field reads `VRFT_<NAME>` unless it says otherwise."""

    model_config = SettingsConfigDict(env_prefix="VRFT_", extra="ignore")

    home: Path = Path(".vrft")
    """All data lives here: database, files, checkpoints, caches, the first api key."""
    database_url: str | None = None
    """SQLAlchemy URL. Default: SQLite at `{home}/vrft.db`. `postgresql://...` works too."""
    storage: str | None = None
    """Where file and checkpoint blobs go: a folder (default `{home}/storage`) or `s3://bucket/prefix`."""
    s3_endpoint_url: str | None = None
    """S3-compatible endpoint (MinIO, moto...). Credentials come from the usual AWS_* variables."""
    api_key: SecretStr | None = None
    """If set, a valid key of the default project (created on start if it does not exist)."""
    host: str = Field("127.0.0.1", validation_alias=AliasChoices("HOST", "VRFT_HOST"))
    port: int = Field(8000, validation_alias=AliasChoices("PORT", "VRFT_PORT"))

    max_upload_bytes: int = 2 * 1024**3
    """Largest file accepted by POST /v1/files (bytes)."""
    max_training_rows: int = 50_000
    max_image_bytes: int = 10 * 1024**2
    max_images_per_row: int = 10

    max_image_pixels: int = 40_000_000
    """Largest image (width x height) accepted in a training file, when a job stages its data, and in chat. A
    small compressed file can decode to gigabytes (a decompression bomb): the size is read from the header."""
    max_image_urls_per_file: int = 10_000
    """http(s) image URLs one training or validation file may hold (each is downloaded when a job stages it)."""
    image_url_allowlist: list[str] = []
    """Hosts (`images.example.com`, `*.example.com`) and networks (`10.1.0.0/16`) that image URLs may reach
    although they are not public, as a JSON list. Without an entry, an image URL must resolve to public
    addresses only: loopback, private, link-local, shared and cloud-metadata addresses are refused, after DNS
    resolution and on every redirect. For trusted set-ups; see README "Security"."""
    image_fetch_timeout_seconds: float = 30.0
    """Longest time one image URL may take to download, all of it (connect, headers, every byte)."""
    staging_timeout_seconds: float = 3600.0
    """Longest time a job may spend downloading and checking its data before it fails."""
    max_json_body_bytes: int = 4 * 1024**2
    """Largest JSON request body (jobs, graders, permissions); larger ones get a 413 before they are read."""
    max_chat_body_bytes: int = 50 * 1024**2
    """Largest body of a chat or completions request (images as data URLs included)."""

    base_models: list[str] = []
    """Extra base models besides the folders under `{home}/models/`, as a JSON list: HF folders, or Hugging Face
    Hub ids (`org/name`, `org/name@revision`) that any project may call for chat (downloaded on first use)."""
    hub_downloads: bool = True
    """Download Hugging Face Hub models (job `model`s, hub ids in `base_models`) on first use. False: only ids
    already in the hub cache work; others get a 400 (jobs) or a 404 (chat) that says so."""
    hub_progress_seconds: float = 5.0
    """A job whose model downloads gets one progress event (bytes done of total) at most this often."""
    hf_home: Path | None = Field(None, validation_alias=AliasChoices("HF_HOME", "hf_home"))
    """`HF_HOME`: when set, hub models are cached in `$HF_HOME/hub` (shared with other Hugging Face tools)
    instead of `{home}/hub`."""
    hf_endpoint: str = Field("https://huggingface.co", validation_alias=AliasChoices("HF_ENDPOINT", "hf_endpoint"))
    """`HF_ENDPOINT`: the Hugging Face Hub (or a mirror) that hub ids are resolved on."""
    hf_token: SecretStr | None = Field(None, validation_alias=AliasChoices("HF_TOKEN", "hf_token"))
    """`HF_TOKEN`: the token sent to the hub, for gated and private repos."""
    embedded_worker: bool = True
    """`vrft serve` runs a job worker in the same process."""
    worker_train: bool = True
    """Workers run training jobs. False on a host that should only check files and leave training to
    workers on other (GPU) machines sharing the database; jobs then wait in `queued`."""
    worker_poll_seconds: float = 1.0
    job_lease_seconds: float = 60.0
    """A claimed job whose worker has not renewed its lease for this long may be taken over."""

    trainer_num_ranks: int = 1
    """Training processes per job. 1 runs `python -m trainer`; more go through DeepSpeed's launcher."""
    trainer_hostfile: str | None = None
    """A DeepSpeed hostfile: the trainer then spans the nodes it lists."""
    trainer_collective_timeout_seconds: float = 600.0
    """Longest time a rank waits for the others in one collective (and at start-up). A host that dies or drops
    off the network mid-job then ends it within this time: the job is paused at its last checkpoint with an
    error event (`host_lost`), to be resumed once the hostfile's hosts are sound. Keep it above the slowest
    step's wait (rank 0 saving a checkpoint, generating rollouts)."""
    accelerator: Literal["auto", "cpu", "cuda"] = "auto"
    """What training runs on, for the memory plan: auto is a GPU where `nvidia-smi` is found on this host. Set it
    when workers run on other machines than the API. (The install reads the same `VRFT_ACCELERATOR` to pick the
    CUDA or the CPU stack: scripts/install_ml_stack.sh.)"""
    device_memory_gib: float | None = None
    """Memory of each training device in GiB (a GPU's, or the worker host's RAM on CPU), for the memory plan a
    job gets at creation (trainer/memory.py). Unset: this host's first GPU, else its RAM. Set it when workers
    run on other machines than the API."""
    rollout_engine: str = "vllm"
    """`vllm` (offline engine in the trainer) or `hf` (the training model in a transformers decode loop)."""
    rollout_compile: bool = False
    """`hf` engine: torch.compile its decode step. Faster per token on small models (a quarter on the tiny
    one), at a one-off compile of 10-60 s per trainer start (cached in `{home}/cache/inductor`); needs
    a C compiler on the trainer's host."""
    grader_url: str | None = None
    """Grade through a remote grader service (`vrft grader serve`) instead of in the trainer."""
    grader_model_base_url: str | None = None
    """Where judge models (score_model, label_model graders) are called: an OpenAI-compatible base URL ending in
    /v1, with `grader_model_api_key`. Default: this service's own /v1 on its configured host and port, as the
    caller (never an address taken from the request)."""
    grader_model_api_key: SecretStr | None = None
    """The key sent to `grader_model_base_url` (the caller's own key is sent only to this service itself)."""
    grader_run_timeout_seconds: float = 150.0
    """Longest time one POST /v1/fine_tuning/alpha/graders/run may take, judge calls and retries included."""
    grader_run_concurrency_per_project: int = 4
    """Grader runs (POST .../graders/run) one project may have in flight; more get a 429 with Retry-After."""
    trainer_stop_seconds: float = 20.0
    """How long a cancelled or pausing trainer gets before it is killed."""

    # ---- where the trainer runs (api/runner.py, api/k8s_launcher.py)
    trainer_launcher: Literal["process", "kubernetes"] = "process"
    """`process`: the worker starts the trainer as its own child process (DeepSpeed's launcher for several ranks),
    on the worker's host and GPUs. `kubernetes`: the worker hands each training job to the cluster as a batch/v1
    Job sized from the job's memory plan (GPUs = `trainer_num_ranks`), so GPUs are held only while a job trains;
    `home` must then be a ReadWriteMany volume mounted at the same path in the worker and in the Job's pod
    (`k8s_home_claim`). infra/README.md, "Kubernetes"."""
    k8s_kubeconfig: str | None = None
    """`kubernetes` launcher: a kubeconfig file to reach the cluster with. Unset: the in-cluster service account
    (`KUBERNETES_SERVICE_HOST`), else `$KUBECONFIG` or `~/.kube/config`."""
    k8s_namespace: str | None = None
    """Namespace of the training Jobs. Unset: the worker's own (in-cluster), else the kubeconfig context's, else
    `default`."""
    k8s_image: str | None = None
    """Image of the training Jobs: the worker's own image (it holds the trainer); required by that launcher."""
    k8s_image_pull_policy: str | None = None
    """`imagePullPolicy` of the training container (unset: the cluster's default)."""
    k8s_home_claim: str = "vrft-home"
    """The ReadWriteMany PersistentVolumeClaim holding `home`, mounted at `home` in the training pod."""
    k8s_env_from: list[str] = []
    """Environment of the training container, as JSON: `configmap:NAME` and `secret:NAME` entries (the trainer's
    `VRFT_*` knobs, e.g. the ConfigMap that sets the hardware; a Secret with the grader settings)."""
    k8s_service_account: str | None = None
    """Service account of the training pods (unset: the namespace's default; they call no Kubernetes API)."""
    k8s_gpu_resource: str = "nvidia.com/gpu"
    """The extended resource a GPU is requested as (one per rank)."""
    k8s_cpu_per_rank: float = 4.0
    """CPU cores requested per rank."""
    k8s_host_memory_per_rank_gib: float = 12.0
    """Host memory per rank besides what the memory plan counts in host memory (the interpreter, torch, CUDA and
    vLLM's imports, the data loader): the pod requests ranks x (this + offloaded optimizer/parameters + the
    weights a sleeping vLLM keeps in host memory)."""
    k8s_memory_limit_factor: float | None = 1.5
    """The pod's memory limit is its request times this (None: no limit)."""
    k8s_shm_gib: float = 16.0
    """Size of the pod's memory-backed /dev/shm (NCCL between the ranks of a pod)."""
    k8s_node_selector: dict[str, str] = {}
    """nodeSelector of the training pods, as JSON (`{"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}`)."""
    k8s_tolerations: list[dict] = []
    """Tolerations of the training pods, as JSON (Kubernetes' own field names: key, operator, value, effect)."""
    k8s_labels: dict[str, str] = {}
    """More labels of the training Jobs, as JSON (`{"kueue.x-k8s.io/queue-name": "gpu"}`: queued by Kueue)."""
    k8s_priority_class: str | None = None
    """priorityClassName of the training pods."""
    k8s_active_deadline_seconds: int | None = None
    """A training Job still running after this long is stopped by Kubernetes and the job fails (unset: none)."""
    k8s_ttl_seconds_after_finished: int = 3600
    """A finished training Job (and its pod, with its log) is deleted by Kubernetes after this long."""
    k8s_termination_grace_seconds: int = 60
    """How long a cancelled trainer's pod gets from SIGTERM to SIGKILL."""
    k8s_poll_seconds: float = 2.0
    """How often the worker reads its training Job's status (events are read from the shared folder as always)."""
    k8s_request_timeout_seconds: float = 30.0
    """How long one call to the Kubernetes API server may take (connect and read) before it counts as unanswered."""
    k8s_delete_give_up_seconds: float = 300.0
    """How long a worker keeps trying to delete a training Job (a cancel, a container that cannot start) while the
    Kubernetes API server does not answer; past it the worker lets the job go, with a line in the job's log naming
    the Job to delete by hand (it may still hold its GPUs)."""

    # ---- serving (serving/, /v1/chat/completions): vLLM OpenAI servers per model
    serving_mode: Literal["managed", "external"] = "managed"
    """`managed`: the API starts a vLLM server per model on first use and stops the least recently used one
    past the budget. `external`: something else runs the vLLM servers (a Kubernetes deployment, say), and
    `serving_external_urls` says where each model is served."""
    serving_external_urls: dict[str, str] = {}
    """`external` mode: model id -> base URL of the vLLM server that serves it (`http://host:8000`), as JSON.
    The key `*` is the server for any model not listed."""
    serving_python: str | None = None
    """The Python that runs `-m vllm.entrypoints.openai.api_server` (default: the API's own interpreter)."""
    serving_device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where managed engines run. `auto`: CUDA when torch sees a GPU, else vLLM's CPU build."""
    serving_dtype: str = "auto"
    """vLLM `--dtype` (`auto`, `bfloat16`, `float16`, `float32`)."""
    serving_max_model_len: int = 4096
    """vLLM `--max-model-len`: the longest prompt plus completion, in tokens."""
    serving_max_num_seqs: int = 16
    """vLLM `--max-num-seqs`: sequences an engine batches at once."""
    serving_kv_cache_gib: float | None = None
    """KV cache per engine in GiB (CPU: `VLLM_CPU_KVCACHE_SPACE`, default 1; GPU: `--kv-cache-memory-bytes`,
    default: vLLM's `--gpu-memory-utilization` rule)."""
    serving_gpu_memory_utilization: float | None = None
    """vLLM `--gpu-memory-utilization` on GPU hosts (default: vLLM's 0.9). Lower it to fit several engines."""
    serving_tensor_parallel_size: int = 1
    """vLLM `--tensor-parallel-size` on GPU hosts."""
    serving_enforce_eager: bool = False
    """vLLM `--enforce-eager`: no torch.compile / CUDA graphs. Starts faster (CPU: ~23 s instead of ~30 s
    warm), runs slower."""
    serving_single_process: bool = False
    """Run vLLM's engine core inside its HTTP server process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, executor
    `uni`, only with tensor parallel size 1): saves one interpreter start (~20 s on 2 CPU cores)."""
    serving_extra_args: list[str] = []
    """More vLLM flags, as a JSON list (`["--max-num-batched-tokens", "4096"]`)."""
    serving_max_engines: int = 2
    """Managed engines running at once; starting one more stops the least recently used idle one that the
    asking project may take (fair share: its own, or one of a project that holds more engines than it)."""
    serving_max_n: int = 16
    """Largest `n` (completions per request) a chat or completions request may ask for."""
    serving_max_memory_gib: float | None = None
    """Memory budget of all managed engines (estimated per engine: weights + KV cache +
    `serving_engine_overhead_gib`); starting one past it stops the least recently used idle ones."""
    serving_engine_overhead_gib: float = 2.5
    """Memory of one engine besides its weights and KV cache (interpreter, torch, vLLM; ~2 GiB seen on CPU)."""
    serving_idle_seconds: float = 1800.0
    """A managed engine that served nothing for this long is stopped. 0 keeps engines until evicted."""
    serving_start_wait_seconds: float = 30.0
    """How long a request waits for its model's engine to start before it gets a 503 with `Retry-After`."""
    serving_start_timeout_seconds: float = 600.0
    """An engine not healthy after this long is killed and the requests waiting on it get a 502."""
    serving_read_timeout_seconds: float = 600.0
    """Longest silence from an engine while it answers (before the first byte or between chunks)."""
    serving_prewarm: bool = True
    """Start the engine of a fine-tuned model as soon as its job succeeds, so the first request does not pay
    the engine's start-up (20-50 s on CPU)."""
    serving_access_cache_seconds: float = 5.0
    """How long a chat request's checks (API key -> project, project + model -> weights folder) are reused by
    the next requests, so a served token pays no database round trip. A revoked key or checkpoint permission
    stops working for chat within this time (at once on the server that revoked it). 0 checks every request."""
    serving_poll_seconds: float = 5.0
    """How often the serving manager checks engines (crashes, idle timeout) and newly succeeded jobs."""

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL with a driver SQLAlchemy can use (psycopg 3 for PostgreSQL)."""
        url = self.database_url or f"sqlite:///{self.home / 'vrft.db'}"
        for prefix in ("postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix):]
        return url

    @property
    def storage_url(self) -> str:
        return self.storage or str(self.home / "storage")

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def tmp_dir(self) -> Path:
        return self.home / "tmp"

    @property
    def jobs_dir(self) -> Path:
        return self.home / "jobs"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def hub_cache_dir(self) -> Path:
        """huggingface_hub's cache layout (`models--org--name/{blobs,refs,snapshots}`)."""
        return self.hf_home.expanduser().resolve() / "hub" if self.hf_home else self.home / "hub"


@lru_cache
def get_settings() -> Settings:
    return Settings()
