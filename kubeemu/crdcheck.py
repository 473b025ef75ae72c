"""What an API server does with a custom resource before storing it, for the parts the CRDs
rely on: apply schema defaults, validate against the structural schema with strict field
validation (unknown fields are errors, as `kubectl apply` does by default), and evaluate every
CEL rule (`x-kubernetes-validations`, transition rules with oldSelf) with cel-python.

Not an API server: no CEL cost estimation and no Kubernetes CEL extension libraries (the CRDs
use neither), no `format` checks beyond what jsonschema knows, and old objects are correlated
only through object properties (as the API server does for atomic lists)."""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import celpy
import jsonschema

Schema = dict[str, Any]


def openapi_schema(crd: Schema) -> Schema:
    (version,) = crd["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


def walk(schema: Schema, path: str = "") -> Iterator[tuple[str, Schema]]:
    """Every schema node with its path (`.spec.listen[]`, `.spec.nodeSelector{}`)."""
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


def apply_defaults(schema: Schema, value: Any) -> Any:
    """The API server's defaulting: a copy of value with nulls pruned and absent properties
    defaulted, nested defaults applied inside defaulted objects too."""
    value = copy.deepcopy(value)
    return _default(schema, value)


def _default(schema: Schema, value: Any) -> Any:
    if isinstance(value, dict):
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            # Fields that are not nullable: null is pruned before defaulting, as if absent.
            for name in [k for k, v in value.items() if v is None]:
                if not schema.get("properties", {}).get(name, {}).get("nullable"):
                    del value[name]
        for name, sub in schema.get("properties", {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = _default(sub, value[name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in value:
                value[key] = _default(extra, value[key])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        value = [_default(schema["items"], v) for v in value]
    return value


def strict_json_schema(schema: Schema) -> Schema:
    """The structural schema as plain JSON Schema: Kubernetes extensions dropped, unknown
    properties refused unless the node preserves them."""
    out: Schema = {}
    for key, sub in schema.items():
        if key.startswith("x-kubernetes-"):
            continue
        if key == "properties":
            out[key] = {k: strict_json_schema(v) for k, v in sub.items()}
        elif key in ("items", "additionalProperties") and isinstance(sub, dict):
            out[key] = strict_json_schema(sub)
        else:
            out[key] = sub
    if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@dataclasses.dataclass(frozen=True)
class Rule:
    path: str
    rule: str
    message: str | None
    message_expression: str | None
    field_path: str

    @property
    def transition(self) -> bool:
        return "oldSelf" in self.rule


def rules(schema: Schema) -> list[Rule]:
    return [
        Rule(
            path,
            r["rule"],
            r.get("message"),
            r.get("messageExpression"),
            r.get("fieldPath", ""),
        )
        for path, node in walk(schema)
        for r in node.get("x-kubernetes-validations", ())
    ]


_ENV = celpy.Environment()
_PROGRAMS: dict[str, Any] = {}


# (expression, activation as JSON) -> result. Interpreted CEL costs milliseconds a rule, and
# every write re-runs every rule on a mostly unchanged object (status writes, annotations):
# at a thousand MailServices that made admission most of the emulator's time.
_RESULTS: dict[tuple[str, str], Any] = {}
_RESULTS_LIMIT = 50_000


def evaluate(expression: str, activation: dict[str, Any]) -> Any:
    try:
        key = (expression, json.dumps(activation, sort_keys=True))
    except (TypeError, ValueError):
        return _evaluate(expression, activation)
    if key in _RESULTS:
        return _RESULTS[key]
    result = _evaluate(expression, activation)
    if len(_RESULTS) >= _RESULTS_LIMIT:
        _RESULTS.clear()
    _RESULTS[key] = result
    return result


def _evaluate(expression: str, activation: dict[str, Any]) -> Any:
    program = _PROGRAMS.get(expression)
    if program is None:
        program = _PROGRAMS[expression] = _ENV.program(_ENV.compile(expression))
    result = program.evaluate({k: celpy.json_to_cel(v) for k, v in activation.items()})
    if isinstance(result, Exception):
        raise result
    return result


def _dotted(path: str) -> str:
    return path.lstrip(".")


def _cel_errors(
    schema: Schema, value: Any, old: Any, path: str, seen: list[str] | None
) -> list[str]:
    errors: list[str] = []
    for r in schema.get("x-kubernetes-validations", ()):
        if "oldSelf" in r["rule"] and old is None:
            continue  # transition rules run on updates only, when an old value exists
        activation = {"self": value} if old is None else {"self": value, "oldSelf": old}
        if seen is not None:
            seen.append(r["rule"])
        if evaluate(r["rule"], activation):
            continue
        message = r.get("message", "")
        if "messageExpression" in r:
            message = str(evaluate(r["messageExpression"], {"self": value}))
        errors.append(f"{_dotted(path + r.get('fieldPath', ''))}: {message}")
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                sub_old = old.get(name) if isinstance(old, dict) else None
                errors += _cel_errors(sub, value[name], sub_old, f"{path}.{name}", seen)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key, item in value.items():
                sub_old = old.get(key) if isinstance(old, dict) else None
                errors += _cel_errors(extra, item, sub_old, f"{path}[{key}]", seen)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            errors += _cel_errors(schema["items"], item, None, f"{path}[{i}]", seen)
    return errors


def validate(
    crd: Schema,
    obj: Schema,
    old: Schema | None = None,
    *,
    seen: list[str] | None = None,
) -> tuple[Schema, list[str]]:
    """(the object as stored, errors). Errors start with the field's path, `spec.listen: ...`.
    seen, if given, collects every rule evaluated."""
    schema = openapi_schema(crd)
    stored = apply_defaults(schema, obj)
    errors = []
    strict = strict_json_schema(schema)
    # ObjectMeta is the API server's: the CRD may only restrict name and generateName.
    del strict["properties"]["metadata"]["additionalProperties"]
    validator = jsonschema.Draft202012Validator(strict)
    for error in sorted(validator.iter_errors(stored), key=str):
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        errors.append(f"{_dotted(where) or '<root>'}: {error.message}")
    if not errors:
        # Rules assume the types the schema promises, so they run on objects that pass it.
        old_stored = apply_defaults(schema, old) if old is not None else None
        errors += _cel_errors(schema, stored, old_stored, "", seen)
    return stored, errors
