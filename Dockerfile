# syntax=docker/dockerfile:1
#
# WattiWatchman container image.
#
#   docker build -t watti-watchman .
#   docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/watti-watchman:TAG --push .
#   docker run -d --name watti-watchman -p 9292:9292 \
#       -v "$PWD/watti_watchman.yml:/config/watti_watchman.yml:ro" watti-watchman
#
# Multi-arch: every base image below is a multi-platform manifest (amd64, arm64, ...) and the
# build downloads nothing architecture-specific by hand; uv installs the wheels the lock file
# pins for the build platform (all runtime dependencies ship manylinux aarch64 + x86_64 wheels).
#
# hadolint: clean with no rule ignored (run `hadolint Dockerfile`). The only deliberate
# deviations from common lint advice are documented inline where they occur.

ARG PYTHON_VERSION=3.13
# The uv release that wrote uv.lock; bump together with the lock file's tooling.
ARG UV_VERSION=0.13.9

# --- uv binary (multi-arch distroless image; only /uv is used) -------------------------------
FROM ghcr.io/astral-sh/uv:${UV_VERSION} AS uv

# --- builder: a self-contained virtualenv at /opt/venv from the lock file -------------------
FROM python:${PYTHON_VERSION}-slim AS builder
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3 \
    UV_PROJECT_ENVIRONMENT=/opt/venv
WORKDIR /build
# Dependencies first (cached layer as long as pyproject.toml/uv.lock are unchanged) ...
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --no-install-project
# ... then the project itself, installed as a regular (non-editable) wheel.
COPY README.md ./
COPY src ./src
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --no-editable \
 && /opt/venv/bin/watti-watchman --version

# --- runtime: slim Python + the virtualenv, nothing else ------------------------------------
FROM python:${PYTHON_VERSION}-slim AS runtime
LABEL org.opencontainers.image.title="WattiWatchman" \
      org.opencontainers.image.description="Zero feed-in controller for Victron ESS with Janitza meters" \
      org.opencontainers.image.licenses="MIT"
# A fixed numeric uid/gid so Kubernetes' runAsNonRoot can verify it and volume permissions are
# predictable; no home directory, no login shell.
RUN groupadd --system --gid 10001 watti \
 && useradd --system --uid 10001 --gid watti --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin watti
# Same base image and path as in the builder, so the venv's interpreter links stay valid.
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    WATTI_HEALTHCHECK_URL=http://127.0.0.1:9292/healthz \
    WATTI_HTTP_HOST=0.0.0.0
# WATTI_HTTP_HOST: a container's published port needs the server on all of its interfaces; it
# applies only when the configuration sets no `http.host` (outside containers the default is
# 127.0.0.1).
WORKDIR /config
USER 10001:10001
EXPOSE 9292
# /healthz: 200 while every configured meter delivers fresh readings, 503 (naming the stale
# meters) otherwise. urllib raises on 503 and on connection errors, so both mark the container
# unhealthy. Set WATTI_HEALTHCHECK_URL when `http.port` is not 9292.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['WATTI_HEALTHCHECK_URL'], timeout=4)"]
# SIGTERM (the default stop signal): the controllers write 0 W, the feeders sign off, exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["watti-watchman"]
CMD ["run", "-c", "/config/watti_watchman.yml"]
