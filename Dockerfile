# streamscribe worker image.
#
# GPU (default): CUDA 12 + cuDNN 9 runtime, which CTranslate2 (faster-whisper) needs for cuBLAS 12 / cuDNN 9.
#   docker build -t streamscribe:gpu .
# CPU: any Debian/Ubuntu image with or without Python 3.10+, e.g.
#   docker build -t streamscribe:cpu --build-arg BASE_IMAGE=python:3.11-slim .
#
# The image carries the worker (the `worker` extra), the offline Whisper "base" model (`base-model`), the
# Twilio gateway's websockets (`gateway`), and no torch.
ARG BASE_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04
FROM ${BASE_IMAGE}

ARG DEBIAN_FRONTEND=noninteractive
ARG APP_UID=10001

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH}

# The CUDA images have no Python; python:*-slim has one (and venv). Install only what is missing.
# hadolint ignore=DL3008,DL3013
RUN set -eux; \
    if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then \
        apt-get update; \
        apt-get install -y --no-install-recommends python3 python3-venv ca-certificates; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    python3 -c 'import sys; assert sys.version_info >= (3, 10), sys.version'; \
    python3 -m venv "${VIRTUAL_ENV}"; \
    pip install --upgrade pip setuptools wheel; \
    groupadd --system --gid "${APP_UID}" streamscribe; \
    useradd --system --create-home --home-dir /home/streamscribe --uid "${APP_UID}" --gid streamscribe \
        --shell /usr/sbin/nologin streamscribe; \
    mkdir -p /models; \
    chown streamscribe:streamscribe /models

WORKDIR /app

# Dependencies first (cached while only the code changes): a stub of the two packages is enough for pip to
# resolve and install everything pyproject.toml lists; the real code replaces it below.
COPY pyproject.toml ./
# hadolint ignore=DL3013
RUN set -eux; \
    mkdir -p worker producer; touch worker/__init__.py producer/__init__.py README.md; \
    pip install ".[worker,base-model,gateway]"; \
    pip uninstall -y streamscribe; \
    rm -rf worker producer README.md build ./*.egg-info

COPY . .
RUN set -eux; \
    pip install --no-deps .; \
    rm -rf build ./*.egg-info; \
    streamscribe --help >/dev/null

ENV STREAMSCRIBE_ASR__CACHE_DIR=/models \
    STREAMSCRIBE_METRICS_PORT=9400 \
    HF_HOME=/models/huggingface

VOLUME ["/models"]
EXPOSE 9400
USER ${APP_UID}:${APP_UID}

HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:9400/healthz', timeout=3)"]

ENTRYPOINT ["streamscribe"]
CMD ["worker"]
