"""The `signer:` field of a route, validated by the model of the scheme it names.

A discriminated union of every scheme's model would import every scheme to build the route
model. Instead the field reads `scheme`, imports that scheme (`proxy.signers.registry`) and
validates with its model: the same checks, the same errors (the union's own two, for a missing
or unknown `scheme`, are raised as pydantic raised them). Only the JSON schema, for `schema`,
is the union's, so editors and `signing-proxy schema` see every scheme as before.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import Field, GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticKnownError, core_schema

from proxy.signers.base import SignerConfig
from proxy.signers.registry import find_signer_class, scheme_names, signer_classes

DISCRIMINATOR = "'scheme'"


def validate_signer_config(value: Any) -> SignerConfig:
    if isinstance(value, SignerConfig):  # a model already built (code, not YAML)
        scheme: Any = value.scheme
    elif isinstance(value, dict):
        if "scheme" not in value:
            raise PydanticKnownError("union_tag_not_found", {"discriminator": DISCRIMINATOR})
        scheme = value["scheme"]
    else:
        raise PydanticKnownError("model_attributes_type")
    cls = find_signer_class(scheme) if isinstance(scheme, str) else None
    if cls is None:
        expected = ", ".join(f"'{name}'" for name in scheme_names())
        context = {"discriminator": DISCRIMINATOR, "tag": str(scheme), "expected_tags": expected}
        raise PydanticKnownError("union_tag_invalid", context)
    model = cls.config_model
    if isinstance(value, model):
        return value
    return model.model_validate(value)


def union_of_every_scheme() -> Any:
    """The discriminated union of every scheme's model (every scheme imported)."""
    models = tuple(cls.config_model for cls in signer_classes())
    return Annotated[Union[models], Field(discriminator="scheme")]  # noqa: UP007


class SchemeConfigField:
    """Pydantic hooks for `Annotated[SignerConfig, SchemeConfigField]`."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_plain_validator_function(validate_signer_config)

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        from pydantic import TypeAdapter

        return handler(TypeAdapter(union_of_every_scheme()).core_schema)
