# syntax=docker/dockerfile:1
# The CSM worker (workers/csm, `python -m vivavoce_csm`): Sesame CSM-1B through transformers, on a GPU.
# Installed as `make worker-csm` installs it: torch==2.13.0 first, then requirements.txt.
# Build from the repository root:
#   docker build -f configs/docker/csm.Dockerfile -t vivavoce/csm .
# Runs with the NVIDIA Container Toolkit (`--gpus all`, or compose's device reservation): the image brings the
# CUDA runtime inside torch's wheels, the host only its driver.
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    HF_HOME=/cache/huggingface

# /cache: the published weights (sesame/csm-1b) are downloaded there on first start; mount a volume on it
# (or give local weights with --model) so that a restart does not download them again.
RUN useradd --create-home --uid 10001 vivavoce \
    && mkdir -p /cache/huggingface && chown -R vivavoce:vivavoce /cache

# torch is pinned as the Makefile pins it (torch==2.13.0), but as the host's CUDA build of that version, not the
# CPU wheel the Makefile installs on CI: PyPI's Linux x86_64 wheel is the CUDA build. Another CUDA version:
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG TORCH_INDEX_URL=https://pypi.org/simple
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==2.13.0"

# requirements.txt installs ../common and . (editable), so both keep the repo's layout.
COPY workers/common /app/workers/common
COPY workers/csm /app/workers/csm
WORKDIR /app/workers/csm
RUN pip install -r requirements.txt

USER vivavoce
EXPOSE 8710
# /health answers once CSM is loaded and warmed up (the worker listens only then): the first start downloads
# several GB, hence the long start period.
HEALTHCHECK --interval=10s --timeout=5s --start-period=900s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8710/health', timeout=4)"]
# The API key comes from $VIVAVOCE_WORKER_API_KEY; sesame/csm-1b is gated on the Hugging Face hub: set HF_TOKEN.
CMD ["python", "-m", "vivavoce_csm", "--host", "0.0.0.0", "--port", "8710", "--device", "cuda"]
