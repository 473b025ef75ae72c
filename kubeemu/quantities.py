"""Resource quantities as the API server stores them, for the emulator.

The API server parses every quantity of a built-in object (container requests and limits,
an emptyDir's sizeLimit, ...) into a resource.Quantity and serialises it back in canonical
form, so what a client reads back may differ from what it wrote: `0.5` -> `500m`,
`1000m` -> `1`, `1024Mi` -> `1Gi`, `1000` -> `1k`, `1.5Gi` -> `1536Mi`, `2e3` -> `2e3`.

The rules, from kubernetes/apimachinery pkg/api/resource/quantity.go (the comment on
`type Quantity` and `CanonicalizeBytes`) and suffix.go:
- the format is that of the suffix written: binary (Ki, Mi, Gi, Ti, Pi, Ei), decimal
  (n, u, m, none, k, M, G, T, P, E) or decimal exponent (e3, E6, ...);
- precision below 1n is rounded up (away from zero);
- canonical form: no precision lost, no fractional digits, the largest exponent (suffix)
  possible; decimal exponents are multiples of 3;
- a binary quantity between -1024 and 1024, or with a fractional part, is written in the
  decimal format instead;
- zero is "0".
"""

from __future__ import annotations

from typing import Any

from mailwarden.operator.quantities import BINARY, DECIMAL, QuantityError, parse

__all__ = ["QuantityError", "canonical", "canonicalise", "parse"]

_DECIMAL_SUFFIX = {v: k for k, v in DECIMAL.items()}
_BINARY_SUFFIX = {v: k for k, v in BINARY.items()}


def canonical(text: str | int | float) -> str:
    value, fmt = parse(text)
    if value == 0:
        return "0"
    if fmt == "binary" and (-1024 < value < 1024 or value.denominator != 1):
        fmt = "decimal"
    sign = "-" if value < 0 else ""
    value = abs(value)
    if fmt == "binary":
        mantissa, exponent = int(value), 0
        while mantissa % 1024 == 0 and exponent < 60:
            mantissa //= 1024
            exponent += 10
        return f"{sign}{mantissa}{_BINARY_SUFFIX.get(exponent, '')}"
    mantissa, exponent = int(value * 10**9), -9
    while mantissa % 1000 == 0 and exponent < 18:
        mantissa //= 1000
        exponent += 3
    if fmt == "exponent":
        return f"{sign}{mantissa}" + (f"e{exponent}" if exponent else "")
    return f"{sign}{mantissa}{_DECIMAL_SUFFIX[exponent]}"


def _resources(resources: Any) -> None:
    if not isinstance(resources, dict):
        return
    for part in ("limits", "requests"):
        values = resources.get(part)
        if isinstance(values, dict):
            for name, q in list(values.items()):
                if isinstance(q, str | int | float) and not isinstance(q, bool):
                    values[name] = canonical(q)


def _pod_spec(spec: Any) -> None:
    if not isinstance(spec, dict):
        return
    for key in ("containers", "initContainers"):
        for c in spec.get(key) or []:
            if isinstance(c, dict):
                _resources(c.get("resources"))
    for v in spec.get("volumes") or []:
        empty = v.get("emptyDir") if isinstance(v, dict) else None
        if isinstance(empty, dict) and empty.get("sizeLimit") is not None:
            empty["sizeLimit"] = canonical(empty["sizeLimit"])
    _resources(spec.get("resources"))  # pod-level resources (Kubernetes 1.32+)


def canonicalise(plural: str, obj: dict[str, Any]) -> None:
    """Rewrite, in place, the quantities of a Deployment or Pod as the API server stores them
    (a bad quantity raises QuantityError, which the API server answers with 422)."""
    if plural == "pods":
        _pod_spec(obj.get("spec"))
    elif plural in ("deployments", "replicasets", "statefulsets", "daemonsets"):
        _pod_spec(((obj.get("spec") or {}).get("template") or {}).get("spec"))
