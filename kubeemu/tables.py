"""Server-side printing for custom resources, as the API server does it for `kubectl get`:
a GET or list asked with `Accept: application/json;as=Table;g=meta.k8s.io;v=v1` is answered
with a meta.k8s.io/v1 Table whose columns are Name plus the CRD's
additionalPrinterColumns, each cell the column's JSONPath evaluated on the object
(kubernetes/kubernetes staging/src/k8s.io/apiextensions-apiserver/pkg/registry/
customresource/tableconvertor/tableconvertor.go; the Table type:
https://kubernetes.io/docs/reference/using-api/api-concepts/#receiving-resources-as-tables).

JSONPath: the subset printer columns use here, dotted fields and one filter
`[?(@.field=="value")]`. A date column is shown as the API server shows it, a duration
("5m10s" style, the most significant two units)."""

from __future__ import annotations

import datetime
import re
from typing import Any

_STEP = re.compile(r'\.([A-Za-z0-9_-]+)|\[\?\(@\.([A-Za-z0-9_-]+)=="([^"]*)"\)\]')


def wants_table(accept: str) -> bool:
    return "as=Table" in accept


def evaluate(path: str, obj: Any) -> Any:
    """The value at a printer column's JSONPath, or None."""
    values = [obj]
    pos = 0
    while pos < len(path):
        m = _STEP.match(path, pos)
        if m is None:
            raise ValueError(f"JSONPath {path!r}: not in the emulated subset at {path[pos:]!r}")
        pos = m.end()
        field, key, want = m.groups()
        out = []
        for v in values:
            if field is not None:
                if isinstance(v, dict) and field in v:
                    out.append(v[field])
            elif isinstance(v, list):
                out += [x for x in v if isinstance(x, dict) and str(x.get(key)) == want]
        values = out
    if not values:
        return None
    return values[0]


def _age(stamp: str) -> str:
    then = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    seconds = int((datetime.datetime.now(datetime.UTC) - then).total_seconds())
    if seconds < 120:
        return f"{max(0, seconds)}s"
    minutes = seconds // 60
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s"
    if minutes < 180:
        return f"{minutes}m"
    return f"{minutes // 60}h"


def _cell(column: dict[str, Any], obj: dict[str, Any]) -> Any:
    value = evaluate(column["jsonPath"], obj)
    if value is None:
        return None
    if column.get("type") == "date" and isinstance(value, str):
        return _age(value)
    if isinstance(value, list | dict) and column.get("type") == "string":
        import json

        return json.dumps(value, separators=(",", ":"))
    return value


def table(crd: dict[str, Any], objects: list[dict[str, Any]], resource_version: str) -> Any:
    version = crd["spec"]["versions"][0]
    columns = version.get("additionalPrinterColumns") or []
    definitions = [
        {
            "name": "Name",
            "type": "string",
            "format": "name",
            "description": "Name must be unique within a namespace.",
            "priority": 0,
        }
    ] + [
        {
            "name": c["name"],
            "type": c.get("type", "string"),
            "format": c.get("format", ""),
            "description": c.get("description", ""),
            "priority": c.get("priority", 0),
        }
        for c in columns
    ]
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": definitions,
        "rows": [
            {
                "cells": [obj["metadata"]["name"], *(_cell(c, obj) for c in columns)],
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": obj["metadata"],
                },
            }
            for obj in objects
        ],
    }
