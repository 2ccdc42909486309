"""`hmac`: the declarative HMAC scheme. Runs a compiled `Plan` on one request.

Per request, in order: draw the `now` and `random` vars; strip the app's stale credentials;
apply before_sign (every value rendered against the stripped request, then placed); render the
template vars; MAC the message; place the signature (after_sign). The signer keeps only the
plan: everything per request lives in an `Env`.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

from proxy.signers.base import (
    Signer,
    SigningContext,
    SigningRefused,
    SignResult,
    UnsupportedMediaType,
    UpstreamRequest,
)
from proxy.signers.hmac.compiler import URLENCODED, Compiled, Env, is_form
from proxy.signers.hmac.config import HmacConfig
from proxy.signers.hmac.explain import Explanation
from proxy.signers.hmac.params import parse_params, set_params, strip_params
from proxy.signers.hmac.plan import HEADER_UNSAFE, Phase, Plan, build_plan


class FormBodyRequired(UnsupportedMediaType):
    """before_sign/after_sign.form on a body that is not urlencoded (a 415)."""


class UnplaceableHeader(SigningRefused):
    """A header value made from the request is not one line of text (a 400). Raw bytes from
    the config's own templates are refused at load; this is the request's data."""

    status = 400
    code = "invalid_header"


class HmacSigner(Signer[HmacConfig]):
    public_fields = frozenset({"key_id"})  # sent in clear, by the routes that use it

    def __init__(self, config: HmacConfig) -> None:
        self._plan: Final = build_plan(config)
        self._algorithm: Final = config.sign.algorithm

    def needs_body(self, method: str) -> bool:
        return self._plan.needs_body

    def sign(self, request: UpstreamRequest, ctx: SigningContext) -> SignResult:
        return self._run(request, ctx, None)

    def explain(
        self, request: UpstreamRequest, ctx: SigningContext
    ) -> tuple[SignResult, Explanation]:
        explanation = Explanation(key=self._plan.key_shape, algorithm=self._algorithm)
        return self._run(request, ctx, explanation), explanation

    def _run(
        self, request: UpstreamRequest, ctx: SigningContext, explain: Explanation | None
    ) -> SignResult:
        plan = self._plan
        env = Env(request)
        values = env.vars
        for name, now in plan.now_vars:
            values[name] = now(ctx.now_ms).encode()
        if plan.random_vars:
            fixed = ctx.fixed_nonce
            for name, draw in plan.random_vars:
                values[name] = (fixed if fixed is not None else draw()).encode()
        if plan.strip_headers and (
            explain is not None
            or request.query
            or any(name in request.headers for name in plan.strip_headers)
        ):
            env.request = _strip(request, plan, explain)
        if plan.before_sign:
            env.request = _place(env, plan.before_sign, explain)
        for var in plan.template_vars:
            value = _render(var.template, env, f"vars.{var.name}")
            if var.remove_prefix and value.startswith(var.remove_prefix):
                value = value[len(var.remove_prefix) :]
            if var.digest is not None:
                value = var.digest(value)
            values[var.name] = var.encode(value) if var.encode is not None else value
        try:
            message = plan.message.render(env)
        except ValueError as err:
            raise ValueError(f"sign.message: {err}") from None
        if plan.keyed_mac is not None:
            mac = plan.keyed_mac.copy()
            mac.update(message)
        else:
            key = _render(plan.key, env, "sign.key")
            mac = hmac.new(key, message, getattr(hashlib, plan.digest_name))
        env.signature = plan.encode(mac.digest())
        if explain is not None:
            explain.vars = list(values.items())
            explain.message = message
            explain.signature = env.signature.decode()
        if plan.after_sign:
            env.request = _place(env, plan.after_sign, explain)
        return SignResult(env.request, message.decode("utf-8", "backslashreplace"))

    def __repr__(self) -> str:
        return f"HmacSigner({self._algorithm}, key_id=**********, secret=**********)"


def _strip(request: UpstreamRequest, plan: Plan, explain: Explanation | None) -> UpstreamRequest:
    headers = [name for name in plan.strip_headers if name in request.headers]
    query = strip_params(request.query, plan.strip_params) if request.query else request.query
    if explain is not None:
        removed = [p.name for p in parse_params(request.query) if p.name in plan.strip_params]
        explain.stripped = [*headers, *(f"query {name}" for name in removed)]
    if headers:
        request = request.with_headers(remove=headers)
    if query != request.query:
        request = request.replace(query=query)
    return request


def _place(env: Env, phase: Phase, explain: Explanation | None) -> UpstreamRequest:
    """Render every placement against the request as it stands, then apply them in order."""
    try:
        query = [(p.name, p.value.render(env)) for p in phase.query] if phase.query else []
        form = [(p.name, p.value.render(env)) for p in phase.form] if phase.form else []
        headers = (
            [(p.name, p.value.render(env).decode()) for p in phase.headers] if phase.headers else []
        )
    except ValueError:  # a filter's (|b64decode of a value that is not base64), or not text
        raise _which_failed(env, phase) from None
    for name, value in headers:
        if not value.isprintable() and HEADER_UNSAFE.search(value):
            raise UnplaceableHeader(f"{phase.name}.headers.{name}: the value is not one line")
    request = env.request
    if query:
        request = request.replace(query=set_params(request.query, query))
    if form:
        request = _set_form(request, form)
    if headers:
        request = request.with_headers(headers)
    if explain is not None:
        explain.placements += [(f"{phase.name}.query.{n}", v) for n, v in query]
        explain.placements += [(f"{phase.name}.form.{n}", v) for n, v in form]
        explain.placements += [(f"{phase.name}.headers.{n}", v.encode()) for n, v in headers]
    return request


def _which_failed(env: Env, phase: Phase) -> Exception:
    """The error of the first placement that fails, named by its key path."""
    for placement in phase.placements:
        try:
            value = placement.value.render(env)
            if placement.kind == "headers":
                value.decode()
        except UnicodeDecodeError:
            return UnplaceableHeader(f"{placement.where}: the value is not UTF-8 text")
        except ValueError as err:
            return ValueError(f"{placement.where}: {err}")
    return ValueError(f"{phase.name}: a value cannot be rendered")  # pragma: no cover


def _render(template: Compiled, env: Env, where: str) -> bytes:
    try:
        return template.render(env)
    except ValueError as err:  # a filter's, such as |b64decode on a value that is not base64
        raise ValueError(f"{where}: {err}") from None


def _set_form(request: UpstreamRequest, items: list[tuple[str, bytes]]) -> UpstreamRequest:
    body = request.body or b""
    if body and not is_form(request):
        media_type = request.headers.get("Content-Type", "none")[:100]
        raise FormBodyRequired(
            f"this route adds form fields, so the body must be {URLENCODED}"
            f" (Content-Type: {media_type})"
        )
    new_body = set_params(body.decode("utf-8", "surrogateescape"), items).encode(
        "utf-8", "surrogateescape"
    )
    # The length as sent, now: a template may sign {header:Content-Length}.
    headers = {"Content-Length": str(len(new_body))}
    if not is_form(request):  # an empty body: it becomes a form
        headers["Content-Type"] = URLENCODED
    return request.replace(body=new_body).with_headers(headers)
