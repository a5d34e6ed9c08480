# Two commands do all the set-up on a fresh machine:
#   make serve   installs what is missing and starts the service on http://127.0.0.1:8000
#   make test    installs the same and runs the whole test suite
# Both are idempotent: every step leaves a stamp and is skipped the next time unless its inputs changed.

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export VRFT_HOME ?= $(CURDIR)/.vrft
# The second openai SDK major line (3.x, on httpx2) lives beside the venv; the SDK tests run under each.
SDK3_DIR := $(VENV)/sdk-openai3
SDK3_VERSION := 3.54.0
TINY_MODEL := $(VRFT_HOME)/models/tiny-qwen2-vl

.PHONY: install serve test test-fast ml model sdk3 sysdeps testdeps clean-venv
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# bubblewrap: the python grader sandbox (Debian package).
sysdeps:
	@command -v bwrap >/dev/null || { echo "installing bubblewrap"; $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq bubblewrap >/dev/null; }

# chromium and chromium-driver: the dashboard's browser tests (tests/ui; Debian packages), for `make test` only.
# pdsh and openssh-server: the multi-host tests (tests/multihost: DeepSpeed's launcher over ssh to namespace hosts).
testdeps:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { echo "installing chromium and chromium-driver"; $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium chromium-driver >/dev/null; }
	@command -v pdsh >/dev/null && test -x /usr/sbin/sshd || { echo "installing pdsh and openssh-server"; $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq pdsh openssh-server >/dev/null; }

$(VENV)/.stamp-base: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check -U pip 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" ; test $${PIPESTATUS[0]} -eq 0
	@touch $@

ml: $(VENV)/.stamp-base
	bash scripts/install_ml_stack.sh $(VENV)

$(SDK3_DIR)/.stamp: $(VENV)/.stamp-base Makefile
	rm -rf $(SDK3_DIR)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --target $(SDK3_DIR) openai==$(SDK3_VERSION) httpx2 httpcore2 truststore 2>&1 | grep -v "^WARNING: Location" ; test $${PIPESTATUS[0]} -eq 0
	@touch $@

sdk3: $(SDK3_DIR)/.stamp

model: ml
	$(PY) -m trainer.tiny_model --out $(TINY_MODEL)

install: sysdeps $(VENV)/.stamp-base ml sdk3 model

serve: install
	$(VENV)/bin/vrft serve

# The linter (ruff: pyproject.toml), the whole suite with the venv's openai 2.x, then the SDK-driven tests
# again with openai 3.x.
test: install testdeps
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q
	PYTHONPATH=$(CURDIR)/$(SDK3_DIR) $(PY) -m pytest -q -m sdk -p no:cacheprovider

# API tests only, without the ML stack (a quick loop while working on api/).
test-fast: sysdeps $(VENV)/.stamp-base sdk3
	$(PY) -m pytest -q tests/api

# The learning demo through the API: builds once (cached in $(VRFT_HOME)/models/vrft-demo-base) a small pretrained
# base, then few-shot grounding on one seed: SFT warm start, +SFT, +RFT, scored on held-out rows (README: Demo).
# Uses the service on --url or starts one there; outputs in $(VRFT_HOME)/demo.
# `make demo DEMO_ARGS=--quick`: the plumbing-only run (SFT then RFT of the random tiny model, a few minutes).
.PHONY: demo
demo: install
	$(PY) -m demo $(DEMO_ARGS)

clean-venv:
	rm -rf $(VENV)
