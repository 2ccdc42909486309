"""Secret values in the config: a literal, `{env: NAME}` or `{file: PATH}`.

A secret is resolved when the config is loaded, so a missing variable or file is a config
error (with the key path), never a failed request later. The resolved value lives in a
`Secret`, whose `repr`/`str` never show it: the only way to the value is `reveal()`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Final, get_args, get_origin

from pydantic import PlainSerializer, PlainValidator, WithJsonSchema
from pydantic.fields import FieldInfo

_MASK: Final = "**********"


class Secret:
    """A resolved secret. Compares by value; prints as a mask and its source."""

    __slots__ = ("_source", "_value")

    def __init__(self, value: str, source: str = "literal") -> None:
        self._value = value
        self._source = source

    def reveal(self) -> str:
        return self._value

    @property
    def source(self) -> str:
        """Where the value came from (`literal`, `env:NAME`, `file:PATH`); never the value."""
        return self._source

    def __repr__(self) -> str:
        return f"Secret({self._source}, {_MASK})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> Any:  # pickling would copy the value out of our control
        raise TypeError("Secret values cannot be pickled")


def resolve_secret(raw: object) -> Secret:
    """Turn a config value into a `Secret`. Error messages never contain the value."""
    if isinstance(raw, Secret):
        return raw
    if isinstance(raw, str):
        if raw == "":
            raise ValueError("a secret must not be empty")
        return Secret(raw)
    if isinstance(raw, dict):
        if set(raw) == {"env"}:
            return _from_env(raw["env"])
        if set(raw) == {"file"}:
            return _from_file(raw["file"])
        keys = ", ".join(sorted(str(k) for k in raw))
        raise ValueError(f"a secret is a string, {{env: NAME}} or {{file: PATH}}; got keys: {keys}")
    raise ValueError(
        f"a secret is a string, {{env: NAME}} or {{file: PATH}}; got {type(raw).__name__}"
    )


def _from_env(name: object) -> Secret:
    if not isinstance(name, str) or not name:
        raise ValueError("{env: NAME} needs a variable name")
    value = os.environ.get(name)
    if value is None:
        raise ValueError(f"environment variable {name} is not set")
    if value == "":
        raise ValueError(f"environment variable {name} is empty")
    return Secret(value, f"env:{name}")


def _from_file(path: object) -> Secret:
    if not isinstance(path, str) or not path:
        raise ValueError("{file: PATH} needs a path")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"secret file {path} does not exist") from None
    except PermissionError:
        raise ValueError(f"secret file {path} is not readable (permission denied)") from None
    except IsADirectoryError:
        raise ValueError(f"secret file {path} is a directory") from None
    except UnicodeDecodeError:
        raise ValueError(f"secret file {path} is not UTF-8 text") from None
    except OSError as exc:
        raise ValueError(f"secret file {path} cannot be read: {exc.strerror}") from None
    # Kubernetes Secrets and `echo` both leave a trailing newline; it is never part of a key.
    value = text.removesuffix("\n").removesuffix("\r")
    if value == "":
        raise ValueError(f"secret file {path} is empty")
    return Secret(value, f"file:{path}")


_SECRET_SCHEMA: Final = {
    "description": "A secret: a literal string, {env: NAME} or {file: PATH}.",
    "oneOf": [
        {"type": "string", "minLength": 1},
        {
            "type": "object",
            "properties": {"env": {"type": "string", "minLength": 1}},
            "required": ["env"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {"file": {"type": "string", "minLength": 1}},
            "required": ["file"],
            "additionalProperties": False,
        },
    ],
}

SecretValue = Annotated[
    Secret,
    PlainValidator(resolve_secret),
    PlainSerializer(lambda s: _MASK, return_type=str),
    WithJsonSchema(_SECRET_SCHEMA),
]
"""The field type every signer uses for credentials."""


class HeaderBound:
    """The marker of a secret that is sent in an HTTP header value (see `HeaderSecretValue`)."""

    def __repr__(self) -> str:
        return "HeaderBound()"


HEADER_BOUND: Final = HeaderBound()

# C0 controls except horizontal tab, and DEL: what a header value must not hold (RFC 9110 5.5).
_HEADER_UNSAFE: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def resolve_header_secret(raw: object) -> Secret:
    """`resolve_secret`, refusing a value a header cannot carry. The error names the
    character's code point, never the value."""
    secret = resolve_secret(raw)
    found = _HEADER_UNSAFE.search(secret.reveal())
    if found is not None:
        hint = ""
        if secret.source.startswith("file:"):
            hint = " (a secret file may end with one newline, and hold no other line break)"
        raise ValueError(
            f"a control character (U+{ord(found.group()):04X}) is not allowed: this secret "
            f"is sent in an HTTP header{hint}"
        )
    return secret


HeaderSecretValue = Annotated[
    Secret,
    PlainValidator(resolve_header_secret),
    PlainSerializer(lambda s: _MASK, return_type=str),
    WithJsonSchema(_SECRET_SCHEMA),
    HEADER_BOUND,
]
"""The field type of a credential that goes into a header value (a token, an API key id):
control characters are a config error at load and at reload, not a failed request later.
Query-bound secrets are percent-encoded and keep `SecretValue`."""


def is_header_bound(field: FieldInfo) -> bool:
    """Whether a model field is a `HeaderSecretValue` (also as `HeaderSecretValue | None`)."""
    return HEADER_BOUND in field.metadata or _marked(field.annotation)


def _marked(annotation: object) -> bool:
    if get_origin(annotation) is Annotated:
        return HEADER_BOUND in getattr(annotation, "__metadata__", ())
    return any(_marked(arg) for arg in get_args(annotation))
