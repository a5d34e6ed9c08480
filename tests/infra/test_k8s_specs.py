"""The `kubernetes` launcher's Job spec and the manifests in infra/k8s, checked against the OpenAPI schema of the
official `kubernetes` client (tests/infra/k8s_schema.py: unknown fields, wrong types and missing required fields
fail), and the Job's sizing against the memory plan (trainer/memory.py). No cluster is involved."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from api import k8s_launcher
from api.settings import Settings
from tests.helpers import REPO
from tests.infra.k8s_schema import SchemaError, assert_valid, validate
from tests.trainer.test_memory import QWEN25_VL_3B  # Qwen/Qwen2.5-VL-3B-Instruct's dimensions
from trainer import memory
from trainer.job_spec import JobSpec

GIB = 1 << 30
MIB = 1 << 20

SMALL_CONFIG = {  # a text+vision model of a few million parameters
    "model_type": "qwen2_vl",
    "text_config": {"model_type": "qwen2_vl_text", "hidden_size": 64, "intermediate_size": 128,
                    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000},
    "vision_config": {"depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2,
                      "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2},
}


def _spec(tmp_path: Path, config: dict, method: str, hp: dict, ranks: int) -> tuple[JobSpec, Path]:
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text(json.dumps(config))
    job_dir = tmp_path / "home" / "jobs" / "ftjob-AbC123"
    (job_dir / "output").mkdir(parents=True)
    spec = JobSpec(job_id="ftjob-AbC123", method=method, model_path=str(model), train_file=str(job_dir / "t.jsonl"),
                   output_dir=str(job_dir / "output"), hyperparameters=hp, num_ranks=ranks)
    spec.write(job_dir / "JOB.json")
    return spec, job_dir


def _settings(tmp_path: Path, **kw) -> Settings:
    return Settings(home=tmp_path / "home", k8s_image="registry.example/vrft:gpu", **kw)


def _round_trip(body: dict) -> dict:
    """The body through the client's models and back: what the client would send for it."""
    return client.ApiClient().sanitize_for_serialization(client.V1Job.from_dict(body))


def test_small_cpu_job_spec_is_valid_and_sized_from_the_plan(tmp_path: Path) -> None:
    hp = {"n_epochs": 1, "batch_size": 2}
    spec, job_dir = _spec(tmp_path, SMALL_CONFIG, "supervised", hp, ranks=1)
    st = _settings(tmp_path, accelerator="cpu", device_memory_gib=8, k8s_env_from=["configmap:vrft-trainer"])
    size = k8s_launcher.sizing(spec, st)
    body = k8s_launcher.job_manifest(spec, job_dir, st, size, worker_id="worker-0:12")
    assert_valid(body)
    assert _round_trip(body) == body  # nothing the client would drop or rename

    plan = memory.check_job(SMALL_CONFIG, "supervised", hp, 8, 1, device="cpu", rollout_engine="vllm")
    assert size.gpus == 0 and size.ranks == 1
    assert size.memory_bytes == int(12 * GIB) + plan.estimate.total
    c = body["spec"]["template"]["spec"]["containers"][0]
    assert c["resources"]["requests"]["memory"] == f"{-(-size.memory_bytes // MIB)}Mi"
    assert c["resources"]["limits"] == {"memory": f"{-(-int(size.memory_bytes * 1.5) // MIB)}Mi"}  # no GPU
    assert c["resources"]["requests"]["cpu"] == "4000m"
    assert c["command"] == ["python", "-m", "api.k8s_pod", str(job_dir / "JOB.json"), "--ranks", "1"]
    assert c["envFrom"] == [{"configMapRef": {"name": "vrft-trainer"}}]
    assert {"name": "home", "mountPath": str(st.home)} in c["volumeMounts"]
    pod = body["spec"]["template"]["spec"]
    assert {"name": "home", "persistentVolumeClaim": {"claimName": "vrft-home"}} in pod["volumes"]
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    assert body["spec"]["backoffLimit"] == 0 and body["spec"]["ttlSecondsAfterFinished"] == 3600
    assert "activeDeadlineSeconds" not in body["spec"]
    assert body["metadata"]["labels"]["vrft.dev/job-id"] == "ftjob-AbC123"
    assert body["spec"]["template"]["metadata"]["labels"]["vrft.dev/job-id"] == "ftjob-AbC123"
    assert body["metadata"]["generateName"] == "vrft-ftjob-abc123-"
    assert body["metadata"]["annotations"]["vrft.dev/memory-plan"] == plan.message


def test_large_multi_gpu_job_spec_is_valid_and_sized_from_the_plan(tmp_path: Path) -> None:
    # RFT on the 3B model over 8 GPUs of 24 GiB: the plan must turn on ZeRO-3 and optimizer offload, whose state
    # then lives in host memory, next to the weights vLLM keeps there while it sleeps.
    hp = {"n_epochs": 1, "batch_size": 8, "num_generations": 8, "max_completion_length": 256}
    spec, job_dir = _spec(tmp_path, QWEN25_VL_3B, "reinforcement", hp, ranks=8)
    st = _settings(tmp_path, accelerator="cuda", device_memory_gib=24, trainer_num_ranks=8,
                   k8s_active_deadline_seconds=86400, k8s_node_selector={"nvidia.com/gpu.product": "H100"},
                   k8s_tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                   k8s_priority_class="training", k8s_labels={"kueue.x-k8s.io/queue-name": "gpu"},
                   k8s_service_account="vrft-trainer", k8s_image_pull_policy="Always",
                   k8s_env_from=["configmap:vrft-gpu", "secret:vrft-grader"])
    plan = memory.check_job(QWEN25_VL_3B, "reinforcement", hp, 24, 8, device="gpu", rollout_engine="vllm")
    assert plan.fits and plan.estimate.offloaded > 0, plan.message  # the case this test is about
    size = k8s_launcher.sizing(spec, st)
    body = k8s_launcher.job_manifest(spec, job_dir, st, size)
    assert_valid(body)
    assert _round_trip(body) == body

    per_rank = int(12 * GIB) + plan.estimate.offloaded + plan.estimate.parameters * plan.job.dtype_bytes
    assert size.host_bytes_per_rank == {"base": int(12 * GIB), "offloaded": plan.estimate.offloaded,
                                        "vllm_sleep": plan.estimate.parameters * 2}
    assert size.gpus == 8 and size.memory_bytes == 8 * per_rank
    c = body["spec"]["template"]["spec"]["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert c["resources"]["requests"] == {"cpu": "32000m", "memory": f"{-(-8 * per_rank // MIB)}Mi"}
    assert c["command"][-2:] == ["--ranks", "8"] and c["imagePullPolicy"] == "Always"
    assert c["envFrom"] == [{"configMapRef": {"name": "vrft-gpu"}}, {"secretRef": {"name": "vrft-grader"}}]
    pod = body["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "vrft-trainer" and "automountServiceAccountToken" not in pod
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "H100"} and pod["priorityClassName"] == "training"
    assert {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "16384Mi"}} in pod["volumes"]
    assert body["spec"]["activeDeadlineSeconds"] == 86400
    assert body["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu"


def test_the_api_pod_command_builds_the_trainer_as_the_process_launcher_does() -> None:
    from api.k8s_pod import trainer_command

    assert trainer_command("/j/JOB.json", 1, python="py") == ["py", "-m", "trainer", "/j/JOB.json"]
    cmd = trainer_command("/j/JOB.json", 4, python="py")
    assert cmd[:5] == ["py", "-m", "deepspeed.launcher.runner", "--num_gpus", "4"]
    assert cmd[-3:] == ["--module", "trainer", "/j/JOB.json"]


def test_no_plan_falls_back_to_the_base_memory(tmp_path: Path) -> None:
    spec, job_dir = _spec(tmp_path, {"model_type": "unknown"}, "supervised", {}, ranks=2)
    st = _settings(tmp_path, accelerator="cuda", k8s_memory_limit_factor=None)
    size = k8s_launcher.sizing(spec, st)
    assert size.gpus == 2 and size.memory_bytes == 2 * 12 * GIB and size.memory_limit_bytes is None
    assert size.plan.startswith("no memory plan")
    body = k8s_launcher.job_manifest(spec, job_dir, st, size)
    assert_valid(body)
    assert body["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "2"}


def test_the_schema_check_refuses_unknown_fields_wrong_types_and_missing_required_fields(tmp_path: Path) -> None:
    spec, job_dir = _spec(tmp_path, SMALL_CONFIG, "supervised", {}, ranks=1)
    st = _settings(tmp_path, accelerator="cpu", device_memory_gib=8)
    good = k8s_launcher.job_manifest(spec, job_dir, st, k8s_launcher.sizing(spec, st))
    cases = {
        "unknown": (lambda b: b["spec"]["template"]["spec"]["containers"][0].update(imagePolicy="x"),
                    "containers[0].imagePolicy: unknown field"),
        "snake_case": (lambda b: b["spec"].update(backoff_limit=0), "spec.backoff_limit: unknown field"),
        "wrong_type": (lambda b: b["spec"].update(backoffLimit="0"), "spec.backoffLimit: expected int"),
        "number_quantity": (lambda b: b["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]
                            .update(memory=1024), "requests.memory: expected str"),
        "missing": (lambda b: b["spec"]["template"]["spec"]["containers"][0].pop("name"),
                    "containers[0].name: required by V1Container"),
        "no_template": (lambda b: b["spec"].pop("template"), "spec.template: required by V1JobSpec"),
    }
    for name, (mutate, expected) in cases.items():
        bad = copy.deepcopy(good)
        mutate(bad)
        errors = validate(bad)
        assert any(expected in e for e in errors), (name, errors)
        with pytest.raises(SchemaError):
            assert_valid(bad)


def _manifests() -> list[tuple[str, dict]]:
    out = []
    for path in sorted((REPO / "infra" / "k8s").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return out


@pytest.mark.parametrize("name,obj", _manifests(), ids=[n for n, _ in _manifests()])
def test_every_manifest_in_infra_k8s_is_valid(name: str, obj: dict) -> None:
    assert_valid(obj)


def test_the_manifests_fit_the_launcher() -> None:
    """The worker Deployment, its RBAC and the shared claim say what the launcher needs of them."""
    objs = {(o["kind"], o["metadata"]["name"]): o for _, o in _manifests()}
    worker = objs[("Deployment", "vrft-worker")]["spec"]["template"]["spec"]
    c = worker["containers"][0]
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    assert env["VRFT_TRAINER_LAUNCHER"] == "kubernetes"
    assert env["VRFT_K8S_IMAGE"] == c["image"]  # the Jobs run the worker's own image
    assert "nvidia.com/gpu" not in json.dumps(c.get("resources", {}))  # the worker holds no GPU
    claim = env.get("VRFT_K8S_HOME_CLAIM") or "vrft-home"
    pvc = objs[("PersistentVolumeClaim", claim)]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    home_volume = next(v["name"] for v in worker["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName")
                       == claim)
    mount = next(m["mountPath"] for m in c["volumeMounts"] if m["name"] == home_volume)
    assert env["VRFT_HOME"] == mount  # the Jobs mount the claim at VRFT_HOME: the same path as here
    sa = worker["serviceAccountName"]
    binding = next(o for (k, _), o in objs.items() if k == "RoleBinding" and any(
        s["name"] == sa for s in o["subjects"]))
    role = objs[("Role", binding["roleRef"]["name"])]
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
               for v in rule["verbs"]}
    for verb in ("create", "get", "list", "delete"):
        assert ("batch", "jobs", verb) in granted, verb
    assert ("batch", "jobs/status", "get") in granted  # read_namespaced_job_status
    for verb in ("list", "delete"):
        assert ("", "pods", verb) in granted, verb
    api = objs[("Deployment", "vrft-api")]["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "VRFT_WORKER_TRAIN", "value": "false"} in api["env"]
