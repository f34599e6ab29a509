# syntax=docker/dockerfile:1
# The ASR service (workers/asr, `python -m vivavoce_asr`): Silero VAD + Smart Turn v3 + faster-whisper over
# WS /v1/asr; CTranslate2 and ONNX Runtime, no torch. Installed as `make worker-asr` installs it.
# Build from the repository root:
#   docker build -f configs/docker/asr.Dockerfile -t vivavoce/asr .
# On a GPU (--device cuda, a CTranslate2 model of your own through --model), CTranslate2 also needs cuBLAS 12
# and cuDNN 9: add `pip install nvidia-cublas-cu12 nvidia-cudnn-cu12` and put their lib/ folders on
# LD_LIBRARY_PATH; the default (tiny.en, int8 on the CPU) needs neither.
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN useradd --create-home --uid 10001 vivavoce

# requirements.txt installs ../common and . (editable), so both keep the repo's layout.
COPY workers/common /app/workers/common
COPY workers/asr /app/workers/asr
WORKDIR /app/workers/asr
RUN pip install -r requirements.txt \
    # pipecat-ai only for the Smart Turn v3 model file it bundles: located, never imported (hence --no-deps).
    && pip install --no-deps "pipecat-ai==1.14.0"

USER vivavoce
EXPOSE 8001
# /health answers once the models are loaded and warmed up (the worker listens only then).
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8001/health', timeout=4)"]
# The API key comes from $VIVAVOCE_WORKER_API_KEY (the worker refuses to start without one unless --no-auth).
CMD ["python", "-m", "vivavoce_asr", "--host", "0.0.0.0", "--port", "8001"]
