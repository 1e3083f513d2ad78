# syntax=docker/dockerfile:1.7
#
# One image for every Faregate process; the command picks the service:
#   docker run IMAGE gateway | keys | billing | usage | notifier | migrate | mock-upstream
# ENTRYPOINT is the `faregate` CLI (faregate/cli.py), so the Kubernetes manifests set only `args`.
#
# Build:  docker build -t faregate:0.1.0 .
# One stage builds the console, one installs the dependencies into a virtualenv; the runtime stage is
# python:3.11-slim with that virtualenv, the source and the built console, nothing else (no compiler, no node,
# no pip cache), running as an unprivileged user.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG NODE_IMAGE=node:22-bookworm-slim

# ---------------------------------------------------------------------------------------------------------------
# The web console (a Vite single-page app, served by the keys service): built here, only its dist/ ships.
FROM ${NODE_IMAGE} AS console
WORKDIR /console
COPY console/package.json console/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY console/ ./
RUN npm run build

# ---------------------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src

# Dependencies first, from pyproject.toml alone (and constraints.txt when the project has one), so a source-only
# change reuses this layer. The project itself is not pip-installed: its code runs from /app (see below).
COPY pyproject.toml constraints.tx[t] ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > requirements.txt \
    && if [ -f constraints.txt ]; then pip install -r requirements.txt -c constraints.txt; \
       else pip install -r requirements.txt; fi

COPY faregate /app/faregate
COPY shared /app/shared
COPY services /app/services
# Bytecode compiled at build time: the root filesystem is read-only at run time.
RUN python -m compileall -q /app /opt/venv/lib \
    && printf '#!/bin/sh\nexec python -m faregate.cli "$@"\n' > /opt/venv/bin/faregate \
    && chmod 0755 /opt/venv/bin/faregate

# ---------------------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="faregate" \
      org.opencontainers.image.description="Self-hosted LLM API relay: gateway, keys, billing, usage, notifier" \
      org.opencontainers.image.licenses="Proprietary"

# A fixed numeric uid/gid, so `runAsNonRoot` in Kubernetes can verify it without a passwd lookup.
RUN groupadd --system --gid 10001 faregate \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home --shell /usr/sbin/nologin faregate \
    && mkdir -p /var/lib/faregate \
    && chown 10001:10001 /var/lib/faregate

COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
# Where services/keys/console.py looks by default (<repo>/console/dist).
COPY --from=console /console/dist /app/console/dist

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FAREGATE_DATA_DIR=/var/lib/faregate

# The spool (usage events while NATS is away) and prometheus multiprocess files live here: mount a volume.
VOLUME ["/var/lib/faregate"]
WORKDIR /app
USER 10001:10001

# Documentation only: each service listens on FAREGATE_<SERVICE>_PORT (gateway 8100 ... notifier 8104).
EXPOSE 8100 8101 8102 8103 8104

ENTRYPOINT ["faregate"]
CMD ["--help"]
