"""Validation against the vendored Braintrust OpenAPI spec (OpenAPI 3.0, nullable and all)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from openapi_schema_validator import OAS30Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

# A copy vendored with the tests (Apache-2.0, see data/braintrust-openapi-README.md).
SPEC_PATHS = [Path(__file__).resolve().parent / "data" / "braintrust-openapi-spec.json"]


@cache
def _registry() -> Registry:
    for path in SPEC_PATHS:
        if path.exists():
            spec = json.loads(path.read_text())
            return Registry().with_resource(
                "spec.json", Resource.from_contents(spec, default_specification=DRAFT4)
            )
    raise FileNotFoundError("braintrust-openapi/spec.json not found")


def _pointer(*parts: str) -> str:
    return "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def validate_list_response(path: str, body: Any) -> None:
    """``body`` as the 200 response of ``GET path`` in the spec."""
    ref = "spec.json#/" + _pointer(
        "paths", path, "get", "responses", "200", "content", "application/json", "schema"
    )
    OAS30Validator({"$ref": ref}, registry=_registry()).validate(body)


def validate_schema(name: str, instance: Any) -> None:
    ref = "spec.json#/" + _pointer("components", "schemas", name)
    OAS30Validator({"$ref": ref}, registry=_registry()).validate(instance)
