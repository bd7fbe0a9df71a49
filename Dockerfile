# syntax=docker/dockerfile:1
# One image for both daemons and the operator CLI: `clustermesh-apiserver`, `clustermesh-agent`, `clustermesh`
# (the apiserver Pod's etcd-init container runs `clustermesh etcd init`). etcd itself runs from the official
# etcd image (deploy/kubernetes/10-apiserver.yaml).
#
#   docker build -t clustermesh:0.1.0 .
#   docker run --rm clustermesh:0.1.0 clustermesh-agent --help

ARG PYTHON=python:3.12-slim-bookworm

# Build wheels for the package and every dependency, so the runtime stage needs no compiler and no network.
FROM ${PYTHON} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY clustermesh ./clustermesh
COPY apiserver ./apiserver
COPY agent ./agent
RUN pip wheel --wheel-dir /wheels .

FROM ${PYTHON}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# The wheels are mounted, not copied, so they never become a layer of the image.
RUN --mount=from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels clustermesh \
 && groupadd --gid 65532 clustermesh \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin clustermesh
# Numeric, so that Kubernetes' runAsNonRoot can verify it; the manifests run the etcd image as the same uid.
USER 65532:65532
CMD ["clustermesh", "--help"]
