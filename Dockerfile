# syntax=docker/dockerfile:1
#
# One image for the operator, the router pods and the replicas (docs/kubernetes.md):
#
#     docker build -t ghcr.io/pilothouse/pilothouse:0.1.0 .
#
# Not built or run on the development machine (no container engine, no registry access
# there): kept minimal, and checked only by reading it. The pods it runs in are restricted
# (runtime/kube/manifests.py, runtime/kube/objects.py): non-root uid 65532, read-only root
# filesystem, an emptyDir at /var/cache/pilothouse (the model cache) and at /tmp.

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: pilothouse's wheel and wheels of all it needs (with the s3 extra) ---------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# every dependency ships wheels for linux amd64/arm64; one that did not would need a compiler
# here (apt-get install build-essential), never in the final stage
RUN python -m pip wheel --wheel-dir /wheels ".[s3]"

# --- final: a venv of those wheels, no compiler, no sources, no network --------------------
FROM ${PYTHON_IMAGE}
ENV VIRTUAL_ENV=/opt/pilothouse \
    PATH=/opt/pilothouse/bin:$PATH
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv --without-pip /opt/pilothouse \
    && python -m pip --no-cache-dir --disable-pip-version-check \
        --python /opt/pilothouse/bin/python \
        install --no-index --find-links /wheels "pilothouse[s3]" \
    && groupadd --system --gid 65532 pilothouse \
    && useradd --system --uid 65532 --gid 65532 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin pilothouse \
    && install -d -o 65532 -g 65532 -m 0755 /var/cache/pilothouse
# pip compiled the bytecode at install; nothing writes .pyc at run time (read-only root).
# HOME and PILOTHOUSE_HOME under /tmp (an emptyDir where anything is written there)
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    PILOTHOUSE_HOME=/tmp/pilothouse
# numeric, so that runAsNonRoot can verify it
USER 65532:65532
ENTRYPOINT ["pilothouse"]
CMD ["--help"]
