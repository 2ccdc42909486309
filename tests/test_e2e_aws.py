"""`aws-sigv4` end to end against a real AWS-compatible server: plain unsigned clients
(`requests`) -> `signing-proxy run` -> moto's server on loopback, which verifies the signatures.

moto's server checks SigV4 once its first `INITIAL_NO_AUTH_ACTION_COUNT` calls are used up. The
fixture spends exactly those (`SETUP_CALLS`) on an IAM user, its access key, a role and allow-all
policies, checks that a wrong secret is now refused, and from then on every request must be
signed with that key or with credentials moto's STS issued. moto recomputes the signature with
botocore's signer from the request it received (the headers it lists as signed, the raw path and
query, and for non-S3 services the body), so the Host, path and query encoding, headers, session
token and non-S3 payload hash the proxy sends are really checked.

What moto does not check, so these tests cannot either (the unit tests cover them, against the
official SigV4 suite and botocore's signer):

- S3 bodies: moto takes the payload hash from the `X-Amz-Content-Sha256` header as sent and
  never hashes the body it received (nor checks `Content-MD5`), so a wrong hash would pass here.
- Clock skew: `X-Amz-Date` is taken as given; a stale signature would pass here.
- Presigned requests (`presign_expires`): moto's server fails with a 500 (it reads the
  `Authorization` header) instead of verifying the query signature.

moto quirks these tests work around: STS is called with a form POST (moto rejects query-string
GET calls even when botocore signs them: it hashes the parsed query as if it were the body), and
S3 bodies are sent without a form content type (moto drops such a body).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import botocore.config  # type: ignore[import-untyped]
import botocore.session  # type: ignore[import-untyped]
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.support import ProxyProcess, free_port, running_proxy

MIB = 1024 * 1024
BIG = 50 * MIB
REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
USER = "signing-proxy-e2e"
ROLE = "signing-proxy-e2e-role"
ALLOW_ALL = json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
)
# moto's INITIAL_NO_AUTH_ACTION_COUNT: the unauthenticated calls `_setup_iam` makes (create_user,
# create_access_key, put_user_policy, create_role, put_role_policy). Found by experiment (moto
# 5.2): with 4, put_role_policy fails with InvalidClientTokenId; with 6, the first call after
# setup still goes unchecked (`_check_auth_is_on` would fail). Only requests that reach a
# service count: waiting for the port uses a bare TCP connect, and botocore must not retry.
SETUP_CALLS = 5
VHOST_BUCKET = "e2e-vhost"
START_TIMEOUT = 30.0


@dataclass
class Moto:
    """moto's server in a subprocess, with the IAM user and role the tests sign as."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    access_key_id: str = ""
    secret_access_key: str = ""
    user_arn: str = ""
    role_arn: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self, service: str, key: str = "setup", secret: str = "setup") -> Any:
        # No retries: a retried setup call would spend one of the unauthenticated calls.
        return botocore.session.Session().create_client(
            service,
            region_name=REGION,
            endpoint_url=self.url,
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            config=botocore.config.Config(retries={"total_max_attempts": 1}),
        )


def _clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any AWS setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_CONFIG_FILE="/dev/null",
        AWS_SHARED_CREDENTIALS_FILE="/dev/null",
        AWS_EC2_METADATA_DISABLED="true",
    )
    env.update(extra)
    return env


@contextlib.contextmanager
def _no_aws_env() -> Iterator[None]:
    """This process's environment without AWS_* (and no shared files) for the duration: botocore
    here (moto setup) and `running_proxy`, which lays its `env` over os.environ, see none."""
    with pytest.MonkeyPatch.context() as mp:
        for name in [k for k in os.environ if k.startswith("AWS_")]:
            mp.delenv(name)
        for name, value in _clean_env().items():
            if name.startswith("AWS_"):
                mp.setenv(name, value)
        yield


def _wait_for_port(process: subprocess.Popen[bytes], port: int, what: str, logs: Any) -> None:
    # A TCP connect only: an HTTP request could count as one of moto's unauthenticated calls.
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited {process.returncode}:\n{logs()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} in {START_TIMEOUT} s:\n{logs()}")


def _setup_iam(moto: Moto) -> None:
    iam = moto.client("iam")
    moto.user_arn = iam.create_user(UserName=USER)["User"]["Arn"]
    key = iam.create_access_key(UserName=USER)["AccessKey"]
    moto.access_key_id, moto.secret_access_key = key["AccessKeyId"], key["SecretAccessKey"]
    iam.put_user_policy(UserName=USER, PolicyName="allow-all", PolicyDocument=ALLOW_ALL)
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": moto.user_arn}, "Action": "sts:AssumeRole"}
        ],
    }
    role = iam.create_role(RoleName=ROLE, AssumeRolePolicyDocument=json.dumps(trust))["Role"]
    moto.role_arn = role["Arn"]
    iam.put_role_policy(RoleName=ROLE, PolicyName="allow-all", PolicyDocument=ALLOW_ALL)


def _check_auth_is_on(moto: Moto) -> None:
    """Authentication must now be enforced, or every other test here would prove nothing."""
    sts = moto.client("sts", moto.access_key_id, "not-the-secret")
    try:
        sts.get_caller_identity()
    except Exception as exc:  # botocore ClientError
        if "SignatureDoesNotMatch" not in str(exc):
            raise
    else:
        raise AssertionError("moto accepted a wrong secret: INITIAL_NO_AUTH_ACTION_COUNT is off")
    identity = moto.client("sts", moto.access_key_id, moto.secret_access_key).get_caller_identity()
    assert identity["Arn"] == moto.user_arn


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    workdir = tmp_path_factory.mktemp("moto")
    log_path = workdir / "moto.log"
    port = free_port()
    env = _clean_env(INITIAL_NO_AUTH_ACTION_COUNT=str(SETUP_CALLS))
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    server = Moto(process, port, log_path)
    try:
        _wait_for_port(process, port, "moto_server", server.logs)
        try:
            with _no_aws_env():
                _setup_iam(server)
                _check_auth_is_on(server)
        except Exception as exc:
            raise RuntimeError(f"moto setup failed: {exc}\n{server.logs()}") from exc
        yield server
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _signer(moto: Moto, service: str | None, **extra: Any) -> dict[str, Any]:
    """Static keys of moto's IAM user, unless the route assumes a role; `service=None`: detect."""
    signer: dict[str, Any] = {"scheme": "aws-sigv4"}
    if service is None:
        signer["detect"] = True
    else:
        signer.update(service=service, region=REGION)
    if "role_arn" not in extra:
        signer["access_key_id"] = moto.access_key_id
        signer["secret_access_key"] = moto.secret_access_key
    signer.update(extra)
    return signer


def _route(name: str, moto: Moto, signer: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "match": {"path_prefix": f"/{name}"},
        "upstream": moto.url,
        "signer": signer,
        **extra,
    }


def _proxy_env(moto: Moto) -> dict[str, str]:
    """Base credentials for the assumed-role route from botocore's chain (the environment), and
    STS at moto; nothing from the test process's own AWS configuration."""
    return _clean_env(
        AWS_ACCESS_KEY_ID=moto.access_key_id,
        AWS_SECRET_ACCESS_KEY=moto.secret_access_key,
        AWS_ENDPOINT_URL_STS=moto.url,
        AWS_STS_REGIONAL_ENDPOINTS="regional",
        AWS_DEFAULT_REGION=REGION,
    )


@contextlib.contextmanager
def _proxy(moto: Moto, routes: list[dict[str, Any]], workdir: Path) -> Iterator[ProxyProcess]:
    with contextlib.ExitStack() as stack:
        with _no_aws_env():
            proxy = stack.enter_context(
                running_proxy({"routes": routes}, workdir, env=_proxy_env(moto))
            )
        yield proxy


@pytest.fixture(scope="module")
def proxy(moto: Moto, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    routes = [
        _route("s3", moto, _signer(moto, "s3"), max_body_bytes=64 * MIB),
        _route("s3-wrong", moto, _signer(moto, "s3", secret_access_key="wrong-secret")),
        _route("sts", moto, _signer(moto, "sts")),
        _route("sts-wrong", moto, _signer(moto, "sts", secret_access_key="wrong-secret")),
        _route("dynamodb", moto, _signer(moto, "dynamodb")),
        # A standard host to sign and send (moto routes by it), service and region detected
        # from it: the route names neither.
        _route(
            "sts-detect",
            moto,
            _signer(moto, None, sign_host=f"sts.{REGION}.amazonaws.com"),
        ),
        _route(
            "s3-vhost",
            moto,
            _signer(moto, None, sign_host=f"{VHOST_BUCKET}.s3.{REGION}.amazonaws.com"),
        ),
        _route("role", moto, _signer(moto, "sts", role_arn=moto.role_arn)),
        _route(
            "role-s3",
            moto,
            _signer(moto, "s3", role_arn=moto.role_arn, payload="unsigned"),
        ),
    ]
    with _proxy(moto, routes, tmp_path_factory.mktemp("aws-proxy")) as process:
        yield process


def _diagnostics(proxy: ProxyProcess, moto: Moto) -> str:
    return f"\n--- proxy log ---\n{proxy.logs()[-6000:]}\n--- moto log ---\n{moto.logs()[-4000:]}"


def _wait_ready(proxy: ProxyProcess, moto: Moto, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if requests.get(f"{proxy.admin_url}/readyz", timeout=5).status_code == 200:
            return
        time.sleep(0.1)
    raise AssertionError(f"/readyz not 200 after {timeout} s{_diagnostics(proxy, moto)}")


def _xml_text(body: str, tag: str) -> str | None:
    root = ET.fromstring(body)
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] == tag:
            return element.text
    return None


def _sts_identity(proxy: ProxyProcess, moto: Moto, route: str, **headers: str) -> str:
    response = requests.post(
        f"{proxy.url}/{route}/",
        data={"Action": "GetCallerIdentity", "Version": "2011-06-15"},
        headers=headers,
        timeout=30,
    )
    assert response.status_code == 200, response.text + _diagnostics(proxy, moto)
    arn = _xml_text(response.text, "Arn")
    assert arn is not None, response.text
    return arn


# -- STS, DynamoDB ------------------------------------------------------------------------------


def test_sts_get_caller_identity(proxy: ProxyProcess, moto: Moto) -> None:
    # The app's own stale signature headers are dropped, not forwarded beside the proxy's.
    stale = {
        "Authorization": "AWS4-HMAC-SHA256 Credential=AKIASTALE/20000101/us-east-1/sts/"
        "aws4_request, SignedHeaders=host, Signature=00",
        "X-Amz-Date": "20000101T000000Z",
        "X-Amz-Security-Token": "stale-token",
    }
    assert _sts_identity(proxy, moto, "sts", **stale) == moto.user_arn


def test_dynamodb_json_calls(proxy: ProxyProcess, moto: Moto) -> None:
    def call(target: str, body: dict[str, Any]) -> Any:
        response = requests.post(
            f"{proxy.url}/dynamodb/",
            data=json.dumps(body),
            headers={
                "X-Amz-Target": f"DynamoDB_20120810.{target}",
                "Content-Type": "application/x-amz-json-1.0",
            },
            timeout=30,
        )
        assert response.status_code == 200, response.text + _diagnostics(proxy, moto)
        return response.json()

    call(
        "CreateTable",
        {
            "TableName": "e2e",
            "KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}],
            "AttributeDefinitions": [{"AttributeName": "id", "AttributeType": "S"}],
            "BillingMode": "PAY_PER_REQUEST",
        },
    )
    item = {"id": {"S": "k1"}, "text": {"S": "olá — ünïcode ✓"}}
    call("PutItem", {"TableName": "e2e", "Item": item})
    got = call("GetItem", {"TableName": "e2e", "Key": {"id": {"S": "k1"}}})
    assert got["Item"] == item
    assert "e2e" in call("ListTables", {})["TableNames"]


def test_sign_host_and_detect(proxy: ProxyProcess, moto: Moto) -> None:
    assert _sts_identity(proxy, moto, "sts-detect") == moto.user_arn


def test_s3_virtual_hosted_style_through_sign_host(proxy: ProxyProcess, moto: Moto) -> None:
    # moto takes the bucket from the Host header the proxy signed and sent.
    created = requests.put(f"{proxy.url}/s3/{VHOST_BUCKET}", timeout=30)
    assert created.status_code == 200, created.text + _diagnostics(proxy, moto)
    base = f"{proxy.url}/s3-vhost"
    _s3_put_get(proxy, moto, base, "virtual/hosted key.txt", b"virtual-hosted style")
    direct = requests.get(f"{proxy.url}/s3/{VHOST_BUCKET}/virtual/hosted%20key.txt", timeout=30)
    assert direct.content == b"virtual-hosted style"


# -- wrong secret -------------------------------------------------------------------------------


def test_wrong_secret_sts_is_rejected_by_moto(proxy: ProxyProcess) -> None:
    response = requests.post(
        f"{proxy.url}/sts-wrong/",
        data={"Action": "GetCallerIdentity", "Version": "2011-06-15"},
        timeout=30,
    )
    assert response.status_code == 403, response.text
    assert _xml_text(response.text, "Code") == "SignatureDoesNotMatch", response.text


def test_wrong_secret_s3_is_rejected_by_moto(proxy: ProxyProcess) -> None:
    response = requests.get(f"{proxy.url}/s3-wrong/", timeout=30)
    assert response.status_code == 403, response.text
    assert _xml_text(response.text, "Code") == "SignatureDoesNotMatch", response.text


# -- S3 -----------------------------------------------------------------------------------------


def _s3_put_get(proxy: ProxyProcess, moto: Moto, base: str, key: str, data: bytes) -> None:
    put = requests.put(f"{base}/{key}", data=data, timeout=60)
    assert put.status_code == 200, put.text + _diagnostics(proxy, moto)
    got = requests.get(f"{base}/{key}", timeout=60)
    assert got.status_code == 200, got.text + _diagnostics(proxy, moto)
    assert got.content == data


def test_s3_small_objects_odd_keys_and_listing(proxy: ProxyProcess, moto: Moto) -> None:
    base = f"{proxy.url}/s3/e2e-small"
    created = requests.put(base, timeout=30)
    assert created.status_code == 200, created.text + _diagnostics(proxy, moto)
    keys = {
        "plain.txt": "plain.txt",
        "dir/sub/file.bin": "dir/sub/file.bin",
        "dir/with space+plus=eq,comma.txt": "dir/with%20space%2Bplus%3Deq%2Ccomma.txt",
        "dir/ünïcode ✓.txt": "dir/%C3%BCn%C3%AFcode%20%E2%9C%93.txt",
        "dir/tilde~and(paren)!.txt": "dir/tilde~and(paren)!.txt",
    }
    for key, url_path in keys.items():
        _s3_put_get(proxy, moto, base, url_path, f"content of {key}".encode())
    listing = requests.get(
        f"{base}?list-type=2&prefix=dir/&max-keys=100",
        headers={"X-Amz-Meta-Extra": "an x-amz-* header: signed as well"},
        timeout=30,
    )
    assert listing.status_code == 200, listing.text + _diagnostics(proxy, moto)
    listed = sorted(
        el.text or ""
        for el in ET.fromstring(listing.text).iter()
        if el.tag.rsplit("}", 1)[-1] == "Key"
    )
    assert listed == sorted(k for k in keys if k.startswith("dir/"))


def test_s3_multipart_upload_and_copy(proxy: ProxyProcess, moto: Moto) -> None:
    """Valueless (`?uploads`) and valued query parameters, an XML body, `x-amz-copy-source`."""
    base = f"{proxy.url}/s3/e2e-multipart"
    created = requests.put(base, timeout=30)
    assert created.status_code == 200, created.text + _diagnostics(proxy, moto)
    started = requests.post(f"{base}/multi part.bin?uploads", timeout=30)
    assert started.status_code == 200, started.text + _diagnostics(proxy, moto)
    upload_id = _xml_text(started.text, "UploadId")
    assert upload_id
    parts = [os.urandom(5 * MIB), os.urandom(1000)]  # moto's minimum part size: 5 MiB
    etags = []
    for number, data in enumerate(parts, 1):
        put = requests.put(
            f"{base}/multi part.bin",
            params={"partNumber": str(number), "uploadId": upload_id},
            data=data,
            timeout=60,
        )
        assert put.status_code == 200, put.text + _diagnostics(proxy, moto)
        etags.append(put.headers["ETag"])
    complete = "".join(
        f"<Part><PartNumber>{n}</PartNumber><ETag>{etag}</ETag></Part>"
        for n, etag in enumerate(etags, 1)
    )
    done = requests.post(
        f"{base}/multi part.bin",
        params={"uploadId": upload_id},
        data=f"<CompleteMultipartUpload>{complete}</CompleteMultipartUpload>",
        headers={"Content-Type": "application/xml"},
        timeout=30,
    )
    assert done.status_code == 200, done.text + _diagnostics(proxy, moto)
    copied = requests.put(
        f"{base}/copy/of%20it.bin",
        headers={"x-amz-copy-source": "/e2e-multipart/multi%20part.bin"},
        timeout=30,
    )
    assert copied.status_code == 200, copied.text + _diagnostics(proxy, moto)
    for key in ("multi%20part.bin", "copy/of%20it.bin"):
        got = requests.get(f"{base}/{key}", timeout=30)
        assert got.status_code == 200, got.text
        assert got.content == b"".join(parts)


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("big") / "object.bin"
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for _ in range(BIG // MIB):
            chunk = os.urandom(MIB)
            digest.update(chunk)
            out.write(chunk)
    return path, digest.hexdigest()


def _s3_round_trip_big(
    proxy: ProxyProcess, moto: Moto, prefix: str, bucket: str, big_file: tuple[Path, str]
) -> None:
    path, sha256 = big_file
    base = f"{proxy.url}/{prefix}/{bucket}"
    created = requests.put(base, timeout=30)
    assert created.status_code == 200, created.text + _diagnostics(proxy, moto)
    with path.open("rb") as body:  # a file: sent with Content-Length, streamed by requests
        put = requests.put(f"{base}/big.bin", data=body, timeout=120)
    assert put.status_code == 200, put.text + _diagnostics(proxy, moto)
    digest = hashlib.sha256()
    size = 0
    with requests.get(f"{base}/big.bin", stream=True, timeout=120) as got:
        assert got.status_code == 200, got.text + _diagnostics(proxy, moto)
        for piece in got.iter_content(1 << 16):
            digest.update(piece)
            size += len(piece)
    assert (size, digest.hexdigest()) == (BIG, sha256)


@pytest.mark.slow
def test_s3_50_mib_signed_payload(
    proxy: ProxyProcess, moto: Moto, big_file: tuple[Path, str]
) -> None:
    _s3_round_trip_big(proxy, moto, "s3", "e2e-big-signed", big_file)


@pytest.mark.slow
def test_s3_50_mib_unsigned_payload_streams(
    moto: Moto, big_file: tuple[Path, str], tmp_path: Path
) -> None:
    # Its own proxy process: the peak RSS must not include another test's buffered body.
    routes = [_route("s3u", moto, _signer(moto, "s3", payload="unsigned"))]
    with _proxy(moto, routes, tmp_path) as proxy:
        baseline = proxy.peak_rss_bytes()
        _s3_round_trip_big(proxy, moto, "s3u", "e2e-big-unsigned", big_file)
        growth = proxy.peak_rss_bytes() - baseline
    assert growth < BIG // 3, f"proxy peak RSS grew by {growth / MIB:.1f} MiB for a 50 MiB object"


# -- assumed role -------------------------------------------------------------------------------


def _metric(proxy: ProxyProcess, name: str, **labels: str) -> float:
    """One sample from the proxy's /metrics; fails when it is not there."""
    text = requests.get(f"{proxy.admin_url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise AssertionError(f"{name}{labels} is not on /metrics:\n{text}")


def test_assumed_role_signs_requests_moto_accepts(proxy: ProxyProcess, moto: Moto) -> None:
    _wait_ready(proxy, moto)
    arn = _sts_identity(proxy, moto, "role")
    # The session name defaults to signing-proxy-<route>.
    assert arn == f"arn:aws:sts::{ACCOUNT}:assumed-role/{ROLE}/signing-proxy-role"

    # The session token is sent and accepted by S3 too.
    base = f"{proxy.url}/role-s3/e2e-role-bucket"
    created = requests.put(base, timeout=30)
    assert created.status_code == 200, created.text + _diagnostics(proxy, moto)
    _s3_put_get(proxy, moto, base, "from-role.txt", b"written with assumed-role credentials")


def test_assumed_role_metrics_and_readiness(proxy: ProxyProcess, moto: Moto) -> None:
    _wait_ready(proxy, moto)
    assert requests.get(f"{proxy.admin_url}/readyz", timeout=5).status_code == 200
    now = time.time()
    for route in ("role", "role-s3"):
        refreshes = _metric(
            proxy, "signing_proxy_credential_refresh_total", route=route, result="success"
        )
        assert refreshes >= 1
        expiry = _metric(proxy, "signing_proxy_credential_expiry_timestamp_seconds", route=route)
        # moto's AssumeRole default lifetime: one hour.
        assert now < expiry <= now + 3600 + 120, (expiry, now)
