"""A strict check of a Kubernetes object (a plain dict, as sent to the API server or written in YAML) against the
OpenAPI schema the official `kubernetes` Python client is generated from: each model's `openapi_types` (field ->
type) and `attribute_map` (field -> JSON name), and the fields its pydantic model requires.

Stricter than `ApiClient().deserialize`, which drops unknown fields without a word: here an unknown field (a typo, a
snake_case name), a value of the wrong type (a number where a quantity string goes, a string where an integer
goes) or a missing required field is an error that names its path. The client's own pydantic validation then runs
too (`model_validate`), as a second opinion on the same schema.
"""

from __future__ import annotations

import re
from typing import Any

from kubernetes import client

KINDS = {
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("v1", "Secret"): "V1Secret",
    ("v1", "Service"): "V1Service",
    ("v1", "ServiceAccount"): "V1ServiceAccount",
    ("v1", "PersistentVolumeClaim"): "V1PersistentVolumeClaim",
    ("v1", "Pod"): "V1Pod",
    ("apps/v1", "Deployment"): "V1Deployment",
    ("batch/v1", "Job"): "V1Job",
    ("rbac.authorization.k8s.io/v1", "Role"): "V1Role",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "V1RoleBinding",
}


class SchemaError(AssertionError):
    pass


def model_for(obj: dict) -> str:
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key not in KINDS:
        raise SchemaError(f"no model for apiVersion/kind {key}")
    return KINDS[key]


def validate(obj: dict, model: str | None = None) -> list[str]:
    """Every schema error of `obj` (empty: valid), as `path: what`."""
    model = model or model_for(obj)
    errors: list[str] = []
    _check(obj, model, model, errors)
    if not errors:
        try:
            getattr(client, model).model_validate(obj)
        except Exception as e:  # noqa: BLE001 - pydantic's ValidationError, reported as text
            errors.append(f"{model}: the client's model refuses it: {e}")
    return errors


def assert_valid(obj: dict, model: str | None = None) -> None:
    errors = validate(obj, model)
    if errors:
        raise SchemaError("\n".join(errors))


def _check(value: Any, type_: str, path: str, errors: list[str]) -> None:
    if value is None:
        return  # an explicit null reads as "unset"
    if m := re.fullmatch(r"(?:List\[(.*)\]|list\[(.*)\])", type_):
        if not isinstance(value, list):
            errors.append(f"{path}: expected a list, got {type(value).__name__}")
            return
        for i, item in enumerate(value):
            _check(item, m.group(1) or m.group(2), f"{path}[{i}]", errors)
        return
    if m := re.fullmatch(r"(?:Dict\[str, (.*)\]|dict\(str, (.*)\))", type_):
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a map, got {type(value).__name__}")
            return
        for k, item in value.items():
            if not isinstance(k, str):
                errors.append(f"{path}: key {k!r} is not a string")
            _check(item, m.group(1) or m.group(2), f"{path}.{k}", errors)
        return
    primitive = {"str": (str,), "int": (int,), "bool": (bool,), "float": (int, float), "datetime": (str,),
                 "date": (str,), "bytearray": (str,)}
    if type_ in primitive:
        ok = isinstance(value, primitive[type_]) and not (type_ in ("int", "float") and isinstance(value, bool))
        if not ok:
            errors.append(f"{path}: expected {type_}, got {type(value).__name__} {value!r}")
        return
    if type_ == "object":  # IntOrString and free-form fields
        return
    cls = getattr(client, type_, None)
    if cls is None or not hasattr(cls, "openapi_types"):
        errors.append(f"{path}: unknown schema type {type_}")
        return
    if not isinstance(value, dict):
        errors.append(f"{path}: expected an object ({type_}), got {type(value).__name__}")
        return
    by_json = {j: attr for attr, j in cls.attribute_map.items()}
    for key, item in value.items():
        if key not in by_json:
            errors.append(f"{path}.{key}: unknown field of {type_}")
            continue
        _check(item, cls.openapi_types[by_json[key]], f"{path}.{key}", errors)
    for attr, f in cls.model_fields.items():
        if f.is_required() and value.get(cls.attribute_map[attr]) is None:
            errors.append(f"{path}.{cls.attribute_map[attr]}: required by {type_}, missing")
