# syntax=docker/dockerfile:1
# The Moshi worker (workers/moshi, `python -m vivavoce_moshi`): Kyutai Moshi, full duplex, several
# conversations batched on one GPU. Installed as `make worker-moshi` installs it: torch==2.13.0, then moshi
# with --no-deps (its own pins want torch<2.10 and aiohttp<3.12), then requirements.txt.
# Build from the repository root:
#   docker build -f configs/docker/moshi.Dockerfile -t vivavoce/moshi .
# Runs with the NVIDIA Container Toolkit (`--gpus all`, or compose's device reservation).
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    HF_HOME=/cache/huggingface

# /cache: the published weights (kyutai/moshiko-pytorch-bf16) are downloaded there on first start; mount a
# volume on it (or give local weights with --model) so that a restart does not download them again.
RUN useradd --create-home --uid 10001 vivavoce \
    && mkdir -p /cache/huggingface && chown -R vivavoce:vivavoce /cache

# torch is pinned as the Makefile pins it (torch==2.13.0), but as the host's CUDA build of that version, not the
# CPU wheel the Makefile installs on CI: PyPI's Linux x86_64 wheel is the CUDA build. Another CUDA version:
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG TORCH_INDEX_URL=https://pypi.org/simple
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==2.13.0"

# requirements.txt installs ../common and . (editable), so both keep the repo's layout.
COPY workers/common /app/workers/common
COPY workers/moshi /app/workers/moshi
WORKDIR /app/workers/moshi
RUN pip install --no-deps "moshi==0.2.13" \
    && pip install -r requirements.txt

USER vivavoce
EXPOSE 8998
# /health answers once Moshi is loaded and warmed up (the worker listens only then): the first start downloads
# the weights (about 15 GB), hence the long start period.
HEALTHCHECK --interval=10s --timeout=5s --start-period=900s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8998/health', timeout=4)"]
# The API key comes from $VIVAVOCE_WORKER_API_KEY.
CMD ["python", "-m", "vivavoce_moshi", "--host", "0.0.0.0", "--port", "8998", "--device", "cuda"]
