#!/usr/bin/env bash
# Install what the full benchmark needs: nginx (upstream and the 1-worker ceiling) and wrk (the
# load generator) from Debian's packages, and py-spy (the profiler) into the project's .venv.
# Idempotent: anything already present is left alone. Needs root (or sudo) for apt-get.
# The packaged nginx service is never started: the bench runs its own nginx processes on
# 127.0.0.1 with their own config, and stops them itself.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi

need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${need[@]}"
else
  echo "nginx and wrk already installed"
fi

if [ -x .venv/bin/python ]; then
  [ -x .venv/bin/py-spy ] || .venv/bin/python -m pip install --quiet py-spy
  echo "py-spy: $(.venv/bin/py-spy --version 2>/dev/null || echo missing)"
else
  echo "no .venv here: create it first (bash scripts/test does), then rerun for py-spy" >&2
fi

echo "nginx: $( (nginx -v 2>&1 || /usr/sbin/nginx -v 2>&1) | head -1)"
echo "wrk: $(wrk -v 2>&1 | head -1 || true)"
