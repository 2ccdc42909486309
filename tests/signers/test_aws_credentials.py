"""aws-sigv4 credentials: refresh ahead of expiry, AssumeRole's STS call, botocore's chain.

No network: STS is botocore's real client with its `Stubber`, the chain reads the environment.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
import time
from typing import Any

import botocore.session  # type: ignore[import-untyped]
import pytest
from botocore.credentials import RefreshableCredentials  # type: ignore[import-untyped]
from botocore.stub import Stubber  # type: ignore[import-untyped]
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.signers import aws_credentials
from proxy.signers.aws_credentials import (
    AssumeRoleSource,
    AwsCredentials,
    BotocoreChainSource,
    CredentialsUnavailableError,
    RefreshingCredentialSource,
    StaticCredentialSource,
)
from proxy.signers.aws_sigv4 import AwsSigV4Config, AwsSigV4Signer
from proxy.signers.base import SigningContext, UpstreamRequest
from tests.verifiers.aws_sigv4 import botocore_recompute, signature_of

ROLE = "arn:aws:iam::123456789012:role/orders-writer"


class FakeSource(RefreshingCredentialSource):
    """Issues `AKID<n>`/`secret<n>`/`token<n>`, each living `lifetime` seconds; a blocking fetch."""

    def __init__(self, lifetime: float, fail_on: set[int] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lifetime = lifetime
        self.fail_on = fail_on or set()
        self.calls = 0
        self.issued: dict[str, AwsCredentials] = {}
        self.threads: set[str] = set()

    def fetch(self) -> AwsCredentials:
        self.calls += 1
        self.threads.add(threading.current_thread().name)
        time.sleep(0.01)  # blocking, like botocore
        if self.calls in self.fail_on:
            raise ConnectionError("sts unreachable")
        n = self.calls
        creds = AwsCredentials(f"AKID{n}", f"secret{n}", f"token{n}", time.time() + self.lifetime)
        self.issued[creds.access_key_id] = creds
        return creds


def _request() -> UpstreamRequest:
    return UpstreamRequest(
        method="POST",
        scheme="https",
        host="sqs.us-east-1.amazonaws.com",
        path="/",
        query="Action=SendMessage",
        headers=CIMultiDictProxy(
            CIMultiDict({"Content-Type": "application/x-www-form-urlencoded"})
        ),
        body=b"MessageBody=hi",
    )


def _config(**fields: Any) -> AwsSigV4Config:
    return AwsSigV4Config.model_validate(
        {"scheme": "aws-sigv4", "service": "sqs", "region": "us-east-1", **fields}
    )


async def _wait_ready(signer: AwsSigV4Signer, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not signer.is_ready():
        assert time.monotonic() < deadline, "credentials never became ready"
        await asyncio.sleep(0.005)


async def _sign_continuously(
    signer: AwsSigV4Signer, source: FakeSource, seconds: float
) -> list[str]:
    """Sign every few ms; every signature must use unexpired credentials and verify."""
    used: list[str] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        now = time.time()
        ctx = SigningContext(now_ms=int(now * 1000), nonce="")
        started = time.perf_counter()
        result = signer.sign(_request(), ctx)  # never raises, never waits
        assert time.perf_counter() - started < 0.05
        akid = result.request.headers["Authorization"].split("Credential=")[1].split("/")[0]
        creds = source.issued[akid]
        assert creds.expiry is not None
        assert creds.expiry > now
        assert result.request.headers["X-Amz-Security-Token"] == creds.session_token
        if akid not in used:
            used.append(akid)
            again = botocore_recompute(
                result.request,
                access_key=creds.access_key_id,
                secret_key=creds.secret_access_key,
                token=creds.session_token,
                region="us-east-1",
                service="sqs",
                amz_date=result.request.headers["X-Amz-Date"],
            )
            assert again.signature == signature_of(result.request)
        await asyncio.sleep(0.003)
    return used


async def test_short_lived_credentials_refresh_ahead_without_a_failed_sign() -> None:
    reports: list[tuple[str, float | None]] = []
    source = FakeSource(
        # Margins wide enough for a loaded CI machine: a thread hop can take a good 100 ms.
        lifetime=1.0,
        refresh_ahead=0.6,
        on_refresh=lambda r, e: reports.append((r, e)),
    )
    signer = AwsSigV4Signer(_config(), credential_source=source)
    assert signer.is_ready() is False
    with pytest.raises(CredentialsUnavailableError, match="not been obtained"):
        signer.sign(_request(), SigningContext.now())
    await signer.start()
    await signer.start()  # idempotent
    try:
        await _wait_ready(signer)
        used = await _sign_continuously(signer, source, 3.0)
    finally:
        await signer.close()
    assert len(used) >= 4  # rotated several times while signing
    assert used == sorted(used, key=lambda a: int(a[4:]))
    assert all(result == "success" for result, _ in reports)
    expiries = [e for _, e in reports if e is not None]
    assert len(expiries) == len(reports)
    assert expiries == sorted(expiries)
    assert all(not name.startswith("MainThread") for name in source.threads)  # in a thread


async def test_a_failed_refresh_keeps_valid_credentials_and_retries() -> None:
    reports: list[tuple[str, float | None]] = []
    source = FakeSource(
        lifetime=1.2,
        fail_on={2, 3},
        refresh_ahead=0.6,
        retry_initial=0.02,
        on_refresh=lambda r, e: reports.append((r, e)),
    )
    signer = AwsSigV4Signer(_config(), credential_source=source)
    await signer.start()
    try:
        await _wait_ready(signer)
        used = await _sign_continuously(signer, source, 1.8)
    finally:
        await signer.close()
    results = [r for r, _ in reports]
    assert results[:4] == ["success", "error", "error", "success"]
    # the errors report the expiry of the credentials still in use
    assert reports[1][1] == reports[0][1] == source.issued["AKID1"].expiry
    assert used[:2] == ["AKID1", "AKID4"]


async def test_expired_and_unrefreshable_is_not_ready() -> None:
    clock = [1000.0]
    source = FakeSource(lifetime=10, fail_on={2}, clock=lambda: clock[0])

    def fetch_once() -> AwsCredentials:
        source.calls += 1
        if source.calls > 1:
            raise ConnectionError("down")
        return AwsCredentials("AKID1", "s", "t", expiry=1010.0)

    source.fetch = fetch_once  # type: ignore[method-assign]
    assert await source.refresh_once() is True
    assert source.is_ready()
    assert source.current().access_key_id == "AKID1"
    assert await source.refresh_once() is False
    clock[0] = 1010.0
    assert source.is_ready() is False
    with pytest.raises(CredentialsUnavailableError, match="expired"):
        source.current()


async def test_refresh_schedule() -> None:
    clock = [0.0]
    source = FakeSource(lifetime=1, clock=lambda: clock[0])
    source._credentials = AwsCredentials("a", "b", expiry=3600.0)
    assert source._delay_after_success() == pytest.approx(3300.0)  # 5 minutes ahead
    source._credentials = AwsCredentials("a", "b", expiry=120.0)
    assert source._delay_after_success() == pytest.approx(60.0)  # short-lived: at half-life
    source._credentials = AwsCredentials("a", "b", expiry=None)
    assert source._delay_after_success() is None  # never expires: stop
    source._credentials = AwsCredentials("a", "b", expiry=10.0)
    assert source._delay_after_error(8.0) == pytest.approx(5.0)  # before the held ones run out


async def test_on_refresh_errors_do_not_stop_refreshing(caplog: pytest.LogCaptureFixture) -> None:
    def broken(result: str, expiry: float | None) -> None:
        raise RuntimeError("metrics down")

    source = FakeSource(lifetime=60, on_refresh=broken)
    with caplog.at_level(logging.ERROR):
        assert await source.refresh_once() is True
    assert source.is_ready()


def _stubbed_sts(monkeypatch: pytest.MonkeyPatch) -> tuple[Stubber, list[dict[str, Any]]]:
    """botocore's real STS client, stubbed; `create_client` calls are recorded."""
    real = botocore.session.Session.create_client
    client = real(
        botocore.session.Session(),
        "sts",
        region_name="eu-west-1",
        aws_access_key_id="AKIDBASE",
        aws_secret_access_key="base-secret",
    )
    stubber = Stubber(client)
    calls: list[dict[str, Any]] = []

    def create_client(self: Any, service: str, **kwargs: Any) -> Any:
        calls.append({"service": service, **kwargs})
        return client

    monkeypatch.setattr(botocore.session.Session, "create_client", create_client)
    return stubber, calls


def _sts_response(n: int, expiry: dt.datetime) -> dict[str, Any]:
    return {
        "Credentials": {
            "AccessKeyId": f"ASIAROLEEXAMPLE{n:04d}",
            "SecretAccessKey": f"role-secret-{n}",
            "SessionToken": f"role-token-{n}",
            "Expiration": expiry,
        },
        "AssumedRoleUser": {
            "AssumedRoleId": "AROAEXAMPLE:orders",
            "Arn": "arn:aws:sts::123456789012:assumed-role/orders-writer/orders",
        },
    }


async def test_assume_role_builds_the_sts_call(monkeypatch: pytest.MonkeyPatch) -> None:
    stubber, calls = _stubbed_sts(monkeypatch)
    expiry = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)
    long_name = "orders-" + "x" * 100
    stubber.add_response(
        "assume_role",
        _sts_response(1, expiry),
        expected_params={
            "RoleArn": ROLE,
            "RoleSessionName": long_name[:64],
            "ExternalId": "partner-42",
        },
    )
    reports: list[tuple[str, float | None]] = []
    config = _config(
        region="eu-west-1",
        access_key_id="AKIDBASE",
        secret_access_key="base-secret",
        role_arn=ROLE,
        session_name=long_name,
        external_id="partner-42",
    )
    signer = AwsSigV4Signer(config, route="orders", on_refresh=lambda r, e: reports.append((r, e)))
    source = signer.credentials
    assert isinstance(source, AssumeRoleSource)
    assert not signer.is_ready()
    with stubber:
        assert await source.refresh_once() is True
        stubber.assert_no_pending_responses()
    assert calls == [
        {
            "service": "sts",
            "region_name": "eu-west-1",
            "aws_access_key_id": "AKIDBASE",
            "aws_secret_access_key": "base-secret",
            "aws_session_token": None,
        }
    ]
    current = source.current()
    assert (current.access_key_id, current.session_token) == ("ASIAROLEEXAMPLE0001", "role-token-1")
    assert current.expiry == expiry.timestamp()
    assert reports == [("success", expiry.timestamp())]
    result = signer.sign(_request(), SigningContext.now())
    assert "Credential=ASIAROLEEXAMPLE0001/" in result.request.headers["Authorization"]
    assert result.request.headers["X-Amz-Security-Token"] == "role-token-1"


async def test_assume_role_defaults_and_refresh(monkeypatch: pytest.MonkeyPatch) -> None:
    stubber, calls = _stubbed_sts(monkeypatch)
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=0.3)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    params = {"RoleArn": ROLE, "RoleSessionName": "signing-proxy-orders-eu"}
    stubber.add_response("assume_role", _sts_response(1, soon), expected_params=params)
    stubber.add_response("assume_role", _sts_response(2, later), expected_params=params)
    # no static keys: STS is called with botocore's default chain (region from the route)
    signer = AwsSigV4Signer(_config(role_arn=ROLE), route="orders/eu")
    with stubber:
        await signer.start()
        try:
            await _wait_ready(signer)
            assert signer.credentials.current().access_key_id == "ASIAROLEEXAMPLE0001"
            deadline = time.monotonic() + 2
            while signer.credentials.current().access_key_id != "ASIAROLEEXAMPLE0002":
                assert time.monotonic() < deadline
                signer.sign(_request(), SigningContext.now())
                await asyncio.sleep(0.01)
        finally:
            await signer.close()
    assert calls == [{"service": "sts", "region_name": "us-east-1"}]


async def test_assume_role_failure_is_reported(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    stubber, _ = _stubbed_sts(monkeypatch)
    stubber.add_client_error("assume_role", "AccessDenied", "not authorized to assume")
    reports: list[tuple[str, float | None]] = []
    signer = AwsSigV4Signer(_config(role_arn=ROLE), on_refresh=lambda r, e: reports.append((r, e)))
    with stubber, caplog.at_level(logging.WARNING):
        assert await signer.credentials.refresh_once() is False  # type: ignore[attr-defined]
    assert reports == [("error", None)]
    assert "AccessDenied" in caplog.text
    assert not signer.is_ready()


def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    for name in (
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", raising=False)
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", raising=False)


async def test_default_chain_reads_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    _isolated_env(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDFROMENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    signer = AwsSigV4Signer(_config())
    assert isinstance(signer.credentials, BotocoreChainSource)
    await signer.start()
    try:
        await _wait_ready(signer)
    finally:
        await signer.close()
    current = signer.credentials.current()
    assert (current.access_key_id, current.session_token, current.expiry) == (
        "AKIDFROMENV",
        None,
        None,
    )


async def test_default_chain_without_credentials(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    _isolated_env(monkeypatch, tmp_path)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    reports: list[tuple[str, float | None]] = []
    source = BotocoreChainSource(on_refresh=lambda r, e: reports.append((r, e)))
    assert await source.refresh_once() is False
    assert reports == [("error", None)]


async def test_default_chain_refreshable_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore's RefreshableCredentials: the expiry is read and renewal happens in fetch()."""
    issued = [0]

    def refresh() -> dict[str, str]:
        issued[0] += 1
        expiry = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=3600)
        return {
            "access_key": f"ASIACHAIN{issued[0]}",
            "secret_key": "chain-secret",
            "token": "chain-token",
            "expiry_time": expiry.isoformat(),
        }

    refreshable = RefreshableCredentials.create_from_metadata(refresh(), refresh, "test")

    class Session:
        def get_credentials(self) -> Any:
            return refreshable

    monkeypatch.setattr(aws_credentials, "_botocore_session", Session)
    source = BotocoreChainSource()
    first = source.fetch()
    assert first.access_key_id == "ASIACHAIN1"
    assert first.expiry is not None
    assert 3500 < first.expiry - time.time() <= 3600
    assert source.fetch().access_key_id == "ASIACHAIN1"  # not due yet: no renewal
    # Our refresh runs REFRESH_AHEAD_SECONDS before the expiry, inside botocore's mandatory
    # window, so that read renews. Move botocore's clock there.
    ahead = aws_credentials.REFRESH_AHEAD_SECONDS
    due = dt.datetime.fromtimestamp(first.expiry - ahead, dt.UTC)
    monkeypatch.setattr(refreshable, "_time_fetcher", lambda: due)
    second = source.fetch()
    assert second.access_key_id == "ASIACHAIN2"
    assert second.expiry is not None
    assert second.expiry > first.expiry
    assert source.poll_without_expiry is not None


def test_credentials_repr_and_static_source() -> None:
    creds = AwsCredentials("AKIDSECRETISH", "s3cr3t-value", "tok3n-value", expiry=0.0)
    text = repr(creds) + str(creds) + repr(StaticCredentialSource(creds))
    assert "s3cr3t-value" not in text
    assert "tok3n-value" not in text
    assert "AKIDSECRETISH" not in text
    assert "1970-01-01T00:00:00Z" in text


def test_session_name_from_route() -> None:
    signer = AwsSigV4Signer(_config(role_arn=ROLE), route="billing api/v2 " + "z" * 80)
    source = signer.credentials
    assert isinstance(source, AssumeRoleSource)
    assert source.session_name == ("signing-proxy-billing-api-v2-" + "z" * 80)[:64]
    assert "external_id=None" in repr(source)
