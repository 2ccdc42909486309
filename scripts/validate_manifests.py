"""Checks on rendered manifests that kubernetes-validate cannot make (scripts/check-deploy.sh).

1. CRDs. kubernetes-validate has no schema for monitoring.coreos.com/v1 ServiceMonitor,
   PodMonitor and PrometheusRule (it only warns). They are validated here, strictly (unknown
   fields rejected), against a JSON schema generated from the prometheus-operator models of
   the PyPI package cloudcoil-models-prometheus-operator. Any other kind without a schema
   fails the check.
2. The deployment contract, on every pod that runs signing-proxy: hardened securityContext,
   whole-directory mounts (no subPath), /tmp on an emptyDir, probes on the admin port,
   a drain timeout below the grace period, no credentials in env, native-sidecar shape,
   checksum annotations that match the rendered ConfigMap/Secret; an app beside a sidecar that
   sets a proxy variable sets both spellings (http_proxy, HTTP_PROXY), aimed at the sidecar.
3. Cross-references: Service, ServiceMonitor, PodMonitor, PDB, HPA and NetworkPolicy
   select pods and ports that exist in the same render.
4. With --program: every rendered config.yaml is accepted by `signing-proxy check`, with the
   credential files it names replaced by dummy files (and those files must live under one of
   the proxy container's Secret mounts); the interception CA by one `signing-proxy ca create`
   makes.
   HTTPS interception: the CA's Secret is mounted by the proxy container only (never the
   app's), and the CA certificate ConfigMap holds a certificate and no private key.

5. Monitoring: a PrometheusRule's rules pass `promtool check rules` (with --promtool) and are
   the rules of deploy/prometheus/alerts.yaml; a Grafana dashboard ConfigMap holds dashboard
   JSON with the label Grafana's sidecar watches.

Usage: validate_manifests.py [--program BIN] [--promtool BIN] FILE[:no-secrets]...
Prints one line per check; exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import yaml

PROXY_COMMAND = ["signing-proxy", "run", "--config"]
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "Pod"}


class Report:
    def __init__(self) -> None:
        self.failures: list[str] = []
        self.passed = 0

    def check(self, ok: bool, what: str, detail: str = "") -> bool:
        if ok:
            self.passed += 1
        else:
            self.failures.append(f"{what}: {detail}" if detail else what)
            print(f"  FAIL {what}{': ' + detail if detail else ''}")
        return ok


# ---- 1. CRDs --------------------------------------------------------------------------------


def _strict(schema: Any) -> Any:
    """Reject unknown fields: every object schema with named properties gets
    additionalProperties: false (what `kubectl --validate=strict` does against a CRD)."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


def crd_validators() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    from cloudcoil.models.prometheus_operator import v1

    validators = {}
    for model in (v1.ServiceMonitor, v1.PodMonitor, v1.PrometheusRule):
        schema = _strict(model.model_json_schema(by_alias=True, mode="validation"))
        validators[("monitoring.coreos.com/v1", model.__name__)] = jsonschema.Draft202012Validator(
            schema
        )
    return validators


# ---- helpers --------------------------------------------------------------------------------


def name_of(doc: dict[str, Any]) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def pod_template(doc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(pod metadata, pod spec) of a workload, or None."""
    if doc.get("kind") == "Pod":
        return doc.get("metadata", {}), doc.get("spec", {})
    if doc.get("kind") in WORKLOAD_KINDS:
        template = doc.get("spec", {}).get("template", {})
        return template.get("metadata", {}), template.get("spec", {})
    return None


def proxy_containers(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for where in ("initContainers", "containers"):
        for container in spec.get(where) or []:
            if (container.get("command") or [])[:3] == PROXY_COMMAND:
                yield where, container


def arg_value(container: dict[str, Any], flag: str) -> str | None:
    args = list(container.get("args") or [])
    return args[args.index(flag) + 1] if flag in args and args.index(flag) + 1 < len(args) else None


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def config_text_sha(text: str) -> str:
    # The chart hashes the config as rendered by toYaml; the ConfigMap's block scalar adds "\n".
    return hashlib.sha256(text.removesuffix("\n").encode()).hexdigest()


# ---- 2. the pod contract ----------------------------------------------------------------


TMP_DIR = "/tmp"  # noqa: S108 - the path the pod must mount an emptyDir on, not a temp file


def check_hardening(report: Report, who: str, c: dict[str, Any], pod_sc: dict[str, Any]) -> None:
    sc = c.get("securityContext") or {}
    seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
    drop = (sc.get("capabilities") or {}).get("drop") or []
    report.check(sc.get("runAsNonRoot") is True, f"{who}: runAsNonRoot")
    report.check(sc.get("runAsUser") == 10001, f"{who}: runAsUser 10001", str(sc.get("runAsUser")))
    report.check(sc.get("readOnlyRootFilesystem") is True, f"{who}: readOnlyRootFilesystem")
    report.check(sc.get("allowPrivilegeEscalation") is False, f"{who}: no privilege escalation")
    report.check("ALL" in drop, f"{who}: drops ALL capabilities")
    report.check(seccomp == "RuntimeDefault", f"{who}: seccomp RuntimeDefault", str(seccomp))
    report.check(bool(c.get("resources", {}).get("requests")), f"{who}: resource requests set")
    # Credentials come from mounted files only.
    env = c.get("env") or []
    report.check(
        all("secretKeyRef" not in (e.get("valueFrom") or {}) for e in env),
        f"{who}: no credentials in env (secretKeyRef)",
    )
    report.check(
        all("secretRef" not in e for e in c.get("envFrom") or []), f"{who}: no envFrom secretRef"
    )


def check_mounts(
    report: Report, who: str, c: dict[str, Any], volumes: dict[str, Any]
) -> tuple[dict[str, Any], str, list[str], list[str]]:
    """Returns (config volume, config key, secret mount paths, secret names)."""
    mounts = c.get("volumeMounts") or []
    report.check(
        all("subPath" not in m and "subPathExpr" not in m for m in mounts),
        f"{who}: no subPath mounts (they never see updates)",
    )
    by_path = {m["mountPath"].rstrip("/"): m for m in mounts}
    tmp = by_path.get(TMP_DIR)
    report.check(
        tmp is not None and "emptyDir" in volumes.get(tmp["name"], {}),
        f"{who}: {TMP_DIR} is an emptyDir",
    )
    for m in mounts:
        if m["mountPath"] != TMP_DIR:
            report.check(m.get("readOnly") is True, f"{who}: {m['mountPath']} mounted read-only")

    # --config points into a mounted ConfigMap directory.
    config_path = c["command"][3] if len(c["command"]) > 3 else ""
    config_dir, _, config_key = config_path.rpartition("/")
    config_mount = by_path.get(config_dir)
    config_volume = volumes.get(config_mount["name"], {}) if config_mount else {}
    report.check("configMap" in config_volume, f"{who}: --config {config_path} is a ConfigMap file")
    secret_mounts = [m for m in mounts if "secret" in volumes.get(m["name"], {})]
    return (
        config_volume,
        config_key,
        [m["mountPath"].rstrip("/") for m in secret_mounts],
        [volumes[m["name"]]["secret"]["secretName"] for m in secret_mounts],
    )


def check_lifecycle(
    report: Report, who: str, where: str, c: dict[str, Any], spec: dict[str, Any]
) -> None:
    if where == "initContainers":
        report.check(c.get("restartPolicy") == "Always", f"{who}: native sidecar, restartPolicy")
    else:
        report.check("restartPolicy" not in c, f"{who}: plain container has no restartPolicy")
    # Probes on the admin port; drain below the grace period.
    admin_port_text = (arg_value(c, "--admin") or "").rpartition(":")[2]
    admin_port = int(admin_port_text) if admin_port_text.isdigit() else None
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = (c.get(probe) or {}).get("httpGet") or {}
        report.check(
            get.get("path") == path and get.get("port") == admin_port,
            f"{who}: {probe} GET {path} on admin port {admin_port}",
            json.dumps(get),
        )
    grace = spec.get("terminationGracePeriodSeconds", 30)
    delay = float(arg_value(c, "--drain-delay") or 3)  # the program's defaults: 3 s, 20 s
    timeout = float(arg_value(c, "--shutdown-timeout") or 20)
    report.check(
        delay + timeout + 1 < grace,  # the proxy exits within their sum + 1 s of SIGTERM
        f"{who}: --drain-delay {delay:g} + --shutdown-timeout {timeout:g} + 1 < grace {grace}",
    )
    # A sidecar's signing port is for its own pod only.
    others = [x for x in spec.get("containers") or [] if x.get("command", [])[:3] != PROXY_COMMAND]
    if where == "initContainers" or others:
        listen = arg_value(c, "--listen") or ""
        report.check(listen.startswith("127.0.0.1:"), f"{who}: sidecar signs on loopback", listen)


def check_app_proxy_env(report: Report, label: str, spec: dict[str, Any]) -> None:
    """Apps beside a sidecar that use it as a forward proxy set http_proxy AND HTTP_PROXY (curl
    and many tools read only the lowercase one for http:// URLs, others only the uppercase
    one), both aimed at the sidecar's signing port; the same for no_proxy/NO_PROXY."""
    sidecars = list(proxy_containers(spec))
    if not sidecars:
        return
    listen = arg_value(sidecars[0][1], "--listen") or ""
    for c in spec.get("containers") or []:
        if (c.get("command") or [])[:3] == PROXY_COMMAND:
            continue
        env = {e["name"]: e.get("value") for e in c.get("env") or [] if "name" in e}
        who = f"{label} app container {c.get('name')}"
        pairs = (
            ("http_proxy", "HTTP_PROXY"),
            ("https_proxy", "HTTPS_PROXY"),
            ("no_proxy", "NO_PROXY"),
        )
        for lower, upper in pairs:
            if lower in env or upper in env:
                report.check(
                    env.get(lower) == env.get(upper),
                    f"{who}: sets both {lower} and {upper}, equal",
                    f"{lower}={env.get(lower)!r} {upper}={env.get(upper)!r}",
                )
        for lower, upper in pairs[:2]:
            if lower in env or upper in env:
                url = env.get(lower) or env.get(upper) or ""
                report.check(
                    url.rstrip("/").endswith(f"://{listen}"),
                    f"{who}: {lower} points at the sidecar's --listen {listen}",
                    url,
                )


def check_proxy_pod(
    report: Report,
    label: str,
    meta: dict[str, Any],
    spec: dict[str, Any],
    docs: list[dict[str, Any]],
) -> list[tuple[dict[str, Any], list[str]]]:
    """Returns (ConfigMap doc, Secret mount paths) pairs for the config check."""
    configs: list[tuple[dict[str, Any], list[str]]] = []
    found = list(proxy_containers(spec))
    report.check(bool(found), f"{label}: runs a signing-proxy container")
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    annotations = meta.get("annotations") or {}
    rendered = {(d.get("kind"), d["metadata"]["name"]): d for d in docs}
    check_app_proxy_env(report, label, spec)
    for where, c in found:
        who = f"{label} {where}/{c['name']}"
        check_hardening(report, who, c, spec.get("securityContext") or {})
        config_volume, config_key, secret_paths, secret_names = check_mounts(
            report, who, c, volumes
        )
        check_lifecycle(report, who, where, c, spec)

        # Checksums roll the pods when the rendered config or secret changes.
        cm_name = config_volume.get("configMap", {}).get("name")
        cm = rendered.get(("ConfigMap", cm_name))
        if cm is not None:
            text = (cm.get("data") or {}).get(config_key, "")
            report.check(
                annotations.get("checksum/config") == config_text_sha(text),
                f"{who}: checksum/config matches ConfigMap {cm_name}",
                str(annotations.get("checksum/config")),
            )
            configs.append((cm, secret_paths))
            check_ca_mounts(
                report, who, cm=cm, config_key=config_key, proxy=c, spec=spec, docs=docs
            )
        else:
            print(f"  note {who}: ConfigMap {cm_name} is not rendered here (existingConfigMap)")
        for secret_name in secret_names:
            if ("Secret", secret_name) in rendered:
                report.check("checksum/secret" in annotations, f"{who}: checksum/secret present")
    return configs


def check_ca_mounts(
    report: Report,
    who: str,
    *,
    cm: dict[str, Any],
    config_key: str,
    proxy: dict[str, Any],
    spec: dict[str, Any],
    docs: list[dict[str, Any]],
) -> None:
    """HTTPS interception: the CA key is mounted into the proxy container and no other; the
    CA certificate (only) is published in a ConfigMap."""
    config = yaml.safe_load((cm.get("data") or {}).get(config_key, "")) or {}
    interception = config.get("interception")
    if not interception:
        return
    key_file = (interception.get("ca_key") or {}).get("file", "")
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    mount = next(
        (
            m
            for m in proxy.get("volumeMounts") or []
            if key_file.startswith(m["mountPath"].rstrip("/") + "/")
        ),
        None,
    )
    report.check(
        mount is not None and "secret" in volumes.get(mount["name"], {}),
        f"{who}: interception.ca_key {key_file} is in a Secret mounted into the proxy container",
    )
    if mount is None:
        return
    others = [
        c.get("name")
        for c in (spec.get("containers") or []) + (spec.get("initContainers") or [])
        if c is not proxy and any(m["name"] == mount["name"] for m in c.get("volumeMounts") or [])
    ]
    report.check(not others, f"{who}: only the proxy container mounts the CA Secret", str(others))
    published = [
        d for d in docs if d.get("kind") == "ConfigMap" and "ca.crt" in (d.get("data") or {})
    ]
    report.check(
        len(published) == 1
        and "BEGIN CERTIFICATE" in published[0]["data"]["ca.crt"]
        and "PRIVATE KEY" not in published[0]["data"]["ca.crt"],
        f"{who}: the CA certificate (no key) is published in a ConfigMap for the apps",
    )


# ---- 3. cross-references --------------------------------------------------------------------


def check_references(report: Report, docs: list[dict[str, Any]]) -> None:
    pods = []  # (labels, container port names, workload name)
    for doc in docs:
        tpl = pod_template(doc)
        if tpl:
            ports = {
                p.get("name") for _, c in proxy_containers(tpl[1]) for p in c.get("ports") or []
            }
            pods.append((tpl[0].get("labels") or {}, ports, doc))
    services = [d for d in docs if d.get("kind") == "Service"]
    for doc in docs:
        kind, spec = doc.get("kind"), doc.get("spec") or {}
        who = name_of(doc)
        if kind == "Service":
            hit = [p for p in pods if selects(spec.get("selector") or {}, p[0])]
            report.check(bool(hit), f"{who}: selects a signing-proxy pod")
            for port in spec.get("ports") or []:
                report.check(
                    any(port.get("targetPort") in p[1] for p in hit),
                    f"{who}: port {port.get('name')} targets an existing container port",
                    str(port.get("targetPort")),
                )
        elif kind == "PodDisruptionBudget":
            report.check(
                any(selects(spec["selector"]["matchLabels"], p[0]) for p in pods),
                f"{who}: selects a signing-proxy pod",
            )
        elif kind == "NetworkPolicy":
            hit = [p for p in pods if selects(spec["podSelector"]["matchLabels"], p[0])]
            report.check(bool(hit), f"{who}: selects a signing-proxy pod")
            for rule in spec.get("ingress") or []:
                for port in rule.get("ports") or []:
                    if isinstance(port.get("port"), str):
                        report.check(
                            any(port["port"] in p[1] for p in hit),
                            f"{who}: named port {port['port']} exists",
                        )
        elif kind == "HorizontalPodAutoscaler":
            ref = spec["scaleTargetRef"]
            report.check(
                any(
                    p[2]["kind"] == ref["kind"] and p[2]["metadata"]["name"] == ref["name"]
                    for p in pods
                ),
                f"{who}: scaleTargetRef {ref['kind']}/{ref['name']} exists",
            )
            target = next((p[2] for p in pods if p[2]["metadata"]["name"] == ref["name"]), {})
            report.check(
                "replicas" not in target.get("spec", {}),
                f"{who}: the Deployment leaves replicas to the HPA",
            )
        elif kind == "ServiceMonitor":
            hit = [
                s
                for s in services
                if selects(spec["selector"]["matchLabels"], s["metadata"].get("labels") or {})
            ]
            report.check(bool(hit), f"{who}: selects a Service")
            for endpoint in spec.get("endpoints") or []:
                report.check(
                    any(
                        endpoint.get("port") in {p.get("name") for p in s["spec"]["ports"]}
                        for s in hit
                    ),
                    f"{who}: endpoint port {endpoint.get('port')} exists on the Service",
                )
        elif kind == "PodMonitor":
            hit = [p for p in pods if selects(spec["selector"]["matchLabels"], p[0])]
            if hit:
                for endpoint in spec.get("podMetricsEndpoints") or []:
                    report.check(
                        any(endpoint.get("port") in p[1] for p in hit),
                        f"{who}: endpoint port {endpoint.get('port')} exists on the pods",
                    )
            else:
                labels = spec["selector"]["matchLabels"]
                print(f"  note {who}: selects pods of another release ({labels})")


# ---- 4. the program accepts the rendered config ---------------------------------------------


def file_refs(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if set(node) == {"file"}:
            yield node
        for value in node.values():
            yield from file_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from file_refs(item)


def _in_mounts(path: str, mounts: list[str]) -> bool:
    return any(path.startswith(mount + "/") for mount in mounts)


def _dummy_key_pem() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _dummy_cert_pem(key_pem: bytes) -> bytes:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    key = serialization.load_pem_private_key(key_pem, password=None)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "config-check")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def fake_key_material(node: Any, tmp: Path, mounts: list[str], report: Report, who: str) -> None:
    """Files whose content the program checks: a `private_key` gets a real (throwaway) PEM key;
    a `tls:` block's client_cert/client_key/ca_file (paths, not secrets) must be in a Secret
    mount and get a matching throwaway certificate and key."""
    if isinstance(node, list):
        for item in node:
            fake_key_material(item, tmp, mounts, report, who)
        return
    if not isinstance(node, dict):
        return
    key = node.get("private_key")
    if isinstance(key, dict) and "file" in key:
        Path(key["file"]).write_bytes(_dummy_key_pem())
    tls = node.get("tls")
    if isinstance(tls, dict) and (tls.get("client_cert") or tls.get("ca_file")):
        key_pem = _dummy_key_pem()
        cert_pem = _dummy_cert_pem(key_pem)
        for field, content in (
            ("client_cert", cert_pem),
            ("client_key", key_pem),
            ("ca_file", cert_pem),
        ):
            path = tls.get(field)
            if not isinstance(path, str):
                continue
            report.check(
                _in_mounts(path, mounts),
                f"{who}: tls.{field} {path} is in a Secret mount ({', '.join(mounts) or 'none'})",
            )
            dummy = tmp / "tls" / path.lstrip("/")
            dummy.parent.mkdir(parents=True, exist_ok=True)
            dummy.write_bytes(content)
            tls[field] = str(dummy)
    for value in node.values():
        fake_key_material(value, tmp, mounts, report, who)


def check_config(
    report: Report, program: str, cm: dict[str, Any], secrets_paths: list[str], label: str
) -> None:
    text = cm["data"]["config.yaml"]
    config = yaml.safe_load(text)
    who = f"{label} ConfigMap/{cm['metadata']['name']}"
    with tempfile.TemporaryDirectory(prefix="sp-config-check.") as tmp:
        fake = copy.deepcopy(config)
        ca_files = {}
        if isinstance(fake.get("interception"), dict):  # a real CA: check verifies it
            subprocess.run(  # noqa: S603 - our own program
                [program, "ca", "create", "--out", f"{tmp}/ca"],
                check=True,
                capture_output=True,
                timeout=120,
            )
            ca_files = {"ca_cert": f"{tmp}/ca/ca.crt", "ca_key": f"{tmp}/ca/ca.key"}
        # The CA's files are checked by check_ca_mounts (a Secret of their own).
        for ref in file_refs({k: v for k, v in fake.items() if k != "interception"}):
            path = ref["file"]
            report.check(
                _in_mounts(path, secrets_paths),
                f"{who}: credential file {path} is in a Secret mount "
                f"({', '.join(secrets_paths) or 'none'})",
            )
            dummy = Path(tmp) / "secrets" / path.lstrip("/")
            dummy.parent.mkdir(parents=True, exist_ok=True)
            dummy.write_text("dummy-credential-0123456789abcdef\n")
            ref["file"] = str(dummy)
        fake_key_material(fake, Path(tmp), secrets_paths, report, who)
        for name, path in ca_files.items():
            fake["interception"][name] = {"file": path}
        config_file = Path(tmp) / "config.yaml"
        config_file.write_text(yaml.safe_dump(fake))
        result = subprocess.run(  # noqa: S603 - our own program, on our own file
            [program, "check", "--config", str(config_file)],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
        )
        report.check(
            result.returncode == 0,
            f"{who}: `signing-proxy check` accepts the rendered config",
            (result.stdout + result.stderr).strip(),
        )


# ---- 5. monitoring --------------------------------------------------------------------------


ALERTS_FILE = Path(__file__).resolve().parent.parent / "deploy" / "prometheus" / "alerts.yaml"


def check_monitoring(report: Report, doc: dict[str, Any], label: str, promtool: str | None) -> None:
    who = f"{label} {name_of(doc)}"
    if doc.get("kind") == "PrometheusRule":
        groups = doc["spec"]["groups"]
        alerts = {r["alert"] for g in groups for r in g["rules"] if "alert" in r}
        shipped = {
            r["alert"]
            for g in yaml.safe_load(ALERTS_FILE.read_text())["groups"]
            for r in g["rules"]
            if "alert" in r
        }
        report.check(
            bool(alerts) and alerts <= shipped,
            f"{who}: its alerts are those of deploy/prometheus/alerts.yaml",
            ", ".join(sorted(alerts ^ shipped)),
        )
        if promtool:
            with tempfile.NamedTemporaryFile("w", suffix=".yaml") as rules:
                yaml.safe_dump(doc["spec"], rules)
                rules.flush()
                result = subprocess.run(  # noqa: S603 - promtool on our own file
                    [promtool, "check", "rules", rules.name],
                    check=False,
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
            report.check(
                result.returncode == 0,
                f"{who}: promtool check rules",
                (result.stdout + result.stderr).strip(),
            )
    elif doc.get("kind") == "ConfigMap" and "signing-proxy.json" in (doc.get("data") or {}):
        try:
            board = json.loads(doc["data"]["signing-proxy.json"])
        except ValueError as err:
            report.check(False, f"{who}: the dashboard is JSON", str(err))
            return
        report.check(
            board.get("uid") == "signing-proxy" and bool(board.get("panels")),
            f"{who}: holds the signing-proxy dashboard",
        )
        labels = doc["metadata"].get("labels") or {}
        report.check("grafana_dashboard" in labels, f"{who}: has a grafana_dashboard label")


# ---- main -----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--program", help="signing-proxy executable for the config check")
    parser.add_argument("--promtool", help="promtool, for `check rules` on PrometheusRules")
    parser.add_argument("files", nargs="+", metavar="FILE[:no-secrets]")
    args = parser.parse_args()

    report = Report()
    validators = crd_validators()
    for spec in args.files:
        path, _, flag = spec.partition(":")
        label = Path(path).stem
        docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
        passed_before, failed_before = report.passed, len(report.failures)
        print(f"{label}: {len(docs)} manifests ({', '.join(sorted(name_of(d) for d in docs))})")
        for doc in docs:
            key = (doc.get("apiVersion"), doc.get("kind"))
            if key in CRD_KINDS:
                errors = sorted(validators[key].iter_errors(doc), key=lambda e: list(e.path))
                report.check(
                    not errors,
                    f"{label} {name_of(doc)}: valid {key[1]} (strict, prometheus-operator schema)",
                    "; ".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors[:5]),
                )
        for doc in docs:
            check_monitoring(report, doc, label, args.promtool)
        if flag == "no-secrets":
            report.check(
                not any(d.get("kind") == "Secret" for d in docs), f"{label}: renders no Secret"
            )
        for doc in docs:
            tpl = pod_template(doc)
            if tpl and any(True for _ in proxy_containers(tpl[1])):
                for cm, secrets_paths in check_proxy_pod(
                    report, f"{label} {name_of(doc)}", tpl[0], tpl[1], docs
                ):
                    if args.program:
                        check_config(report, args.program, cm, secrets_paths, label)
        check_references(report, docs)
        if args.program and not any(pod_template(d) for d in docs):
            for cm in (
                d
                for d in docs
                if d.get("kind") == "ConfigMap" and "config.yaml" in (d.get("data") or {})
            ):
                check_config(report, args.program, cm, ["/etc/signing-proxy/secrets"], label)
        failed = len(report.failures) - failed_before
        print(
            f"  {report.passed - passed_before} checks passed"
            + (f", {failed} failed" * bool(failed))
        )

    print(f"validate_manifests: {report.passed} checks passed, {len(report.failures)} failed")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
