# syntax=docker/dockerfile:1
#
# signing-proxy container image.
#   docker build -t signing-proxy .
#   docker run --rm --read-only --tmpfs /tmp -p 8080:8080 -p 9090:9090 \
#     -v "$PWD/config/demo.yaml:/etc/signing-proxy/config.yaml:ro" signing-proxy
#
# The runtime stage installs the wheel with the same two commands that
# tests/test_wheel_install.py runs, so that test catches a wheel that would not work here.

# ---- builder: build the wheel from the source tree -----------------------------------------
FROM python:3.11-slim-bookworm AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN pip wheel --no-deps --wheel-dir /wheels .

# ---- runtime: the wheel in a venv, run as a non-root user -----------------------------------
FROM python:3.11-slim-bookworm AS runtime

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="signing-proxy" \
      org.opencontainers.image.description="Signing reverse/forward proxy and Kubernetes sidecar for HMAC-authenticated APIs" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

# PYTHONDONTWRITEBYTECODE: the root filesystem is read-only at run time; the bytecode pip
# compiles at install time below is all Python needs.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

RUN groupadd --system --gid 10001 signing-proxy \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin signing-proxy

# Optional extras of the wheel, e.g. --build-arg EXTRAS=aws for botocore: aws-sigv4 routes
# that take credentials from botocore's chain (IRSA, EKS Pod Identity, instance roles) or
# assume a role need it; static keys from files do not.
ARG EXTRAS=""

# The wheel is bind-mounted from the builder, so no build tree or wheel stays in a layer.
# pip is removed afterwards: nothing installs at run time.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir /wheels/*.whl \
 && if [ -n "$EXTRAS" ]; then \
        set -- /wheels/*.whl && /opt/venv/bin/pip install --no-cache-dir "$1[$EXTRAS]"; \
    fi \
 && /opt/venv/bin/pip uninstall --yes pip \
 && signing-proxy --version

USER 10001:10001
WORKDIR /tmp

# 8080: the signing proxy; 9090: admin (/healthz, /readyz, /metrics).
EXPOSE 8080 9090

# Docker/Compose only; Kubernetes ignores it and uses the chart's probes. Python, because the
# slim image has no curl. Assumes the admin port is 9090 (the CMD below).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=3).status == 200 else 1)"]

# SIGTERM (the default stop signal) makes the proxy fail readiness, keep accepting for the
# drain delay (3 s), give in-flight requests --shutdown-timeout (20 s), and exit 0. Docker's
# default stop timeout is 10 s: use `docker stop -t 30` / compose `stop_grace_period: 30s`.
ENTRYPOINT ["signing-proxy", "run", "--config", "/etc/signing-proxy/config.yaml"]
CMD ["--listen", "0.0.0.0:8080", "--admin", "0.0.0.0:9090"]
