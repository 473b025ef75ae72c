"""The CustomResourceDefinitions, generated from the pydantic models (the one source of truth).

Pure: `crds()` returns apiextensions.k8s.io/v1 objects as dicts. pydantic's JSON schema is
turned into a Kubernetes structural schema: `$ref`s inlined, `anyOf [X, null]` reduced to X
(absent and null mean the same to the models, so nothing needs `nullable`), free-form objects
marked `x-kubernetes-preserve-unknown-fields`, and the cross-field rules of the models' validators
restated in CEL (`x-kubernetes-validations`), since an API server cannot run Python.

    python -m mailwarden.operator.crd --write deploy/crds
"""

from __future__ import annotations

import argparse
import copy
import pathlib
import re
import sys
from collections.abc import Sequence
from typing import Any

import pydantic
import yaml

from mailwarden.listener import catalogue
from mailwarden.operator import models

Schema = dict[str, Any]

# Argo CD prunes (and deletes with its Application) whatever left the source, whatever Helm's
# `helm.sh/resource-policy: keep` says; deleting a CRD deletes every MailService with it.
# https://argo-cd.readthedocs.io/en/stable/user-guide/sync-options/ (Prune=false, Delete=false)
ARGOCD_SYNC_OPTIONS = "argocd.argoproj.io/sync-options"
ARGOCD_KEEP = "Prune=false,Delete=false"

# -- CEL rules ------------------------------------------------------------------------------
# Each mirrors a check in models.py, with the same message where CEL can compute it; the tests
# evaluate every one against the same examples as pydantic. Plain CEL only (no Kubernetes
# extension functions such as ip() or isCIDR()) so any CEL library can check them, and every
# list and string they touch is bounded so the API server can estimate their cost.


def _cel_list(names: Sequence[str]) -> str:
    return "[" + ", ".join(f"'{n}'" for n in names) + "]"


def _cel_default_ports() -> str:
    return "{" + ", ".join(f"'{k.name}': {k.port}" for k in catalogue.CATALOGUE.values()) + "}"


_IMPLICIT_TLS = [
    k.name for k in catalogue.CATALOGUE.values() if k.tls is catalogue.TLSMode.IMPLICIT
]


def _same_endpoint(a: str, b: str) -> str:
    # An absent address means all addresses; an absent port the standard port, bound to `std`.
    def address(v: str) -> str:
        return f"(has({v}.address) ? {v}.address : '*')"

    def port(v: str) -> str:
        return f"(has({v}.port) ? {v}.port : std)"

    return f"{address(a)} == {address(b)} && {port(a)} == {port(b)}"


def _range_rules(section: str) -> list[Schema]:
    """The ranges of models.ABUSE_RANGES as CEL, with the models' messages (the field named,
    the value given and the range to use)."""
    rules = []
    for (owner, field), (low, high) in models.ABUSE_RANGES.items():
        if owner != section:
            continue
        off = " (0: off)" if low == 0 else ""
        rules.append(
            {
                "rule": f"!has(self.{field}) || (self.{field} >= {low} && self.{field} <= {high})",
                "message": f"access.{section}.{field}: out of range; use {low} to {high}{off}",
                "messageExpression": f"'access.{section}.{field}: ' + string(self.{field}) + "
                f"' is out of range; use {low} to {high}{off}'",
                "fieldPath": f".{field}",
                "reason": "FieldValueInvalid",
            }
        )
    return rules


RULES: dict[str, list[Schema]] = {
    "MailServiceSpec": [
        {
            "rule": "!(has(self.access) && has(self.access.anonymous) && self.access.anonymous)"
            f" || self.service in {_cel_list(catalogue.ANONYMOUS_SERVICES)}",
            "message": "access.anonymous: anonymous access is only allowed for NNTP and NNTPS",
            "messageExpression": "'access.anonymous: anonymous access is only allowed for NNTP"
            " and NNTPS, not ' + self.service",
            "fieldPath": ".access.anonymous",
            "reason": "FieldValueForbidden",
        },
        {
            # `[x].all(std, ...)` binds std to the standard port in plain CEL.
            "rule": f"!has(self.listen) || [{_cel_default_ports()}[self.service]].all(std, "
            f"self.listen.all(a, self.listen.exists_one(b, {_same_endpoint('a', 'b')})))",
            "message": "listen: the same address and port is listed twice in this MailService "
            "(an absent port is the service's standard port, an absent address all addresses)",
            "fieldPath": ".listen",
            "reason": "FieldValueDuplicate",
        },
        {
            "rule": f"!(self.service in {_cel_list(_IMPLICIT_TLS)}) || has(self.tls)",
            "message": "tls: implicit-TLS services (" + ", ".join(_IMPLICIT_TLS) + ") need "
            "tls.secretName",
            "messageExpression": "'tls: ' + self.service + ' is an implicit-TLS service and needs"
            " tls.secretName'",
            "fieldPath": ".tls",
            "reason": "FieldValueRequired",
        },
        {
            # Keeps floor(maxConnections / replicas) >= 1, so the per-pod caps never add up to
            # more than the service-wide cap (listener_config.per_pod_cap).
            "rule": "!has(self.access) || !has(self.access.maxConnections)"
            " || self.access.maxConnections == 0"
            " || self.access.maxConnections >= (has(self.replicas) ? self.replicas : 1)",
            "message": "access.maxConnections is below replicas; each replica takes "
            "floor(maxConnections / replicas) connections, so use 0 (unlimited) or at least "
            "replicas",
            "messageExpression": "'access.maxConnections: ' + string(self.access.maxConnections)"
            " + ' is below replicas (' + string(has(self.replicas) ? self.replicas : 1) + '); "
            "each replica takes floor(maxConnections / replicas) connections, so use 0 "
            "(unlimited) or at least replicas'",
            "fieldPath": ".access.maxConnections",
            "reason": "FieldValueInvalid",
        },
    ],
    "RateLimit": _range_rules("rateLimit"),
    "AutoBan": _range_rules("autoBan"),
    "GroupItem": [
        {
            "rule": " + ".join(
                f"(has(self.{k}) ? 1 : 0)" for k in ("host", "network", "range", "group")
            )
            + " == 1",
            "message": "an item must have exactly one of host, network, range or group",
            "reason": "FieldValueInvalid",
        },
    ],
}

# Rules on single properties: (model, property alias) -> rules.
PROPERTY_RULES: dict[tuple[str, str], list[Schema]] = {
    ("ListenAddress", "port"): [
        {
            "rule": f"self != {port}",
            "message": message,
            "reason": "FieldValueForbidden",
        }
        for port, message in models.RESERVED_PORTS.items()
    ],
    ("MailServiceSpec", "service"): [
        {
            "rule": "self == oldSelf",
            "message": "service is immutable: create a new MailService for another service",
            "reason": "FieldValueForbidden",
        }
    ],
}

# Lists whose items are keyed: the API server merges them per key (server-side apply).
LIST_MAPS: dict[tuple[str, str], list[str]] = {
    ("MailServiceStatus", "conditions"): ["type"],
    ("IPAddressGroupStatus", "conditions"): ["type"],
}

# Fields the operator defaults rather than the API server: (model, property alias). They stay
# absent in stored objects, so that the operator can tell "not said" from "said", and the
# cluster-wide defaults (the Helm chart's `listener.defaults`) apply to what was not said.
# The models' own defaults are the operator's built-in ones.
OPERATOR_DEFAULTS: frozenset[tuple[str, str]] = frozenset(
    {("Expose", "type"), ("Expose", "externalTrafficPolicy"), ("Expose", "addressRequest")}
)

# -- schema conversion ----------------------------------------------------------------------

_DROP = {"title", "additionalProperties", "$defs"}


def _describe(text: str) -> str:
    # Docstrings wrap at 100 columns; kubectl explain wraps by itself.
    paragraphs = re.split(r"\n\s*\n", text.strip())
    return "\n\n".join(" ".join(p.split()) for p in paragraphs)


class _Converter:
    def __init__(self, defs: dict[str, Schema]) -> None:
        self.defs = defs

    def convert(self, node: Schema, owner: str | None = None) -> Schema:
        """node: a pydantic JSON schema node; owner: the model it is the schema of, if any."""
        node = dict(node)
        if "$ref" in node:
            name = node.pop("$ref").rsplit("/", 1)[-1]
            merged = {**self.defs[name], **node}
            # The model's docstring says more than the one-line field description.
            if "description" in self.defs[name]:
                merged["description"] = self.defs[name]["description"]
            return self.convert(merged, owner=name)
        if "anyOf" in node:
            variants = [v for v in node.pop("anyOf") if v != {"type": "null"}]
            if len(variants) != 1:
                raise ValueError(f"cannot express anyOf {variants!r} in a structural schema")
            if node.get("default", ...) is None:
                del node["default"]
            return self.convert({**variants[0], **node}, owner=owner)
        if node.get("default", ...) is None:
            del node["default"]
        out: Schema = {k: v for k, v in node.items() if k not in _DROP}
        if "description" in out:
            out["description"] = _describe(out["description"])
        kind = out.get("type")
        if kind == "object":
            props = node.get("properties")
            extra = node.get("additionalProperties")
            if props is not None:
                required = set(node.get("required", ()))
                out["properties"] = {
                    name: self._property(owner, name, sub, name in required)
                    for name, sub in props.items()
                }
            elif isinstance(extra, dict):
                out["additionalProperties"] = self.convert(extra)
            else:
                # dict[str, Any]: pass through whatever Kubernetes object is put here
                # (resources, affinity, tolerations) without pruning it.
                out["x-kubernetes-preserve-unknown-fields"] = True
        elif kind == "array":
            out["items"] = self.convert(node["items"])
            out.setdefault("x-kubernetes-list-type", "atomic")
        if owner is not None and owner in RULES:
            out["x-kubernetes-validations"] = copy.deepcopy(RULES[owner])
        return out

    def _property(self, owner: str | None, name: str, node: Schema, required: bool) -> Schema:
        out = self.convert(node)
        if (
            not required
            and "default" not in node  # pydantic writes `default: null` for optional fields
            and out.get("type") == "object"
            and "properties" in out
        ):
            # A sub-object the model builds with default_factory: `default: {}` lets the API
            # server apply the nested defaults too, as pydantic does.
            out["default"] = {}
        if owner is not None:
            if (owner, name) in OPERATOR_DEFAULTS:
                out.pop("default", None)
            if (owner, name) in PROPERTY_RULES:
                out.setdefault("x-kubernetes-validations", []).extend(
                    copy.deepcopy(PROPERTY_RULES[(owner, name)])
                )
            if (owner, name) in LIST_MAPS:
                out["x-kubernetes-list-type"] = "map"
                out["x-kubernetes-list-map-keys"] = LIST_MAPS[(owner, name)]
        return out


def structural_schema(model: type[pydantic.BaseModel]) -> Schema:
    """The model's JSON schema (aliases, validation mode) as a structural schema."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _Converter(raw.get("$defs", {})).convert(raw, owner=model.__name__)


# -- the CRDs -------------------------------------------------------------------------------

_READY = '.status.conditions[?(@.type=="Ready")]'


def _root(description: str, spec: Schema, status: Schema, *, spec_required: bool) -> Schema:
    root: Schema = {
        "type": "object",
        "description": description,
        "properties": {
            "apiVersion": {
                "type": "string",
                "description": "APIVersion defines the versioned schema of this representation "
                "of an object.",
            },
            "kind": {
                "type": "string",
                "description": "Kind is a string value representing the REST resource this "
                "object represents.",
            },
            "metadata": {
                "type": "object",
                "description": "Standard object metadata.",
                "properties": {
                    "name": {
                        "type": "string",
                        # The operator names Services and Deployments after the resource.
                        "description": "A DNS label: at most 63 lower-case letters, digits and "
                        "dashes.",
                        "maxLength": 63,
                        "pattern": models.DNS_LABEL,
                    }
                },
            },
            "spec": spec,
            "status": status,
        },
    }
    if spec_required:
        root["required"] = ["spec"]
    else:
        spec["default"] = {}
    return root


def _crd(
    *,
    kind: str,
    plural: str,
    short_names: list[str],
    schema: Schema,
    columns: list[Schema],
    scale: bool,
) -> Schema:
    subresources: Schema = {"status": {}}
    if scale:
        subresources["scale"] = {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{models.GROUP}",
            "labels": {"app.kubernetes.io/part-of": "mailwarden"},
            "annotations": {ARGOCD_SYNC_OPTIONS: ARGOCD_KEEP},
        },
        "spec": {
            "group": models.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short_names,
                "categories": ["mailwarden"],
            },
            "versions": [
                {
                    "name": models.VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": subresources,
                    "additionalPrinterColumns": columns,
                }
            ],
        },
    }


def _column(name: str, path: str, description: str, kind: str = "string", **extra: Any) -> Schema:
    return {"name": name, "type": kind, "jsonPath": path, "description": description, **extra}


def mailservice_crd() -> Schema:
    schema = _root(
        "A mail service (SMTP, IMAP, NNTP, ...) in front of a real mail server: who may "
        "connect, how many at once, and where admitted sessions go. Start, stop and restart with "
        "the mailwarden.io/state and mailwarden.io/restartedAt annotations.",
        structural_schema(models.MailServiceSpec),
        structural_schema(models.MailServiceStatus),
        spec_required=True,
    )
    columns = [
        _column("Service", ".spec.service", "Which service of the catalogue."),
        _column("Startup", ".spec.startup", "Automatic or Manual."),
        _column("State", ".status.state", "Running, Stopped or Starting."),
        _column(
            "Address",
            ".status.address",
            "Where clients reach it, as assigned (<pending> until the load balancer assigns).",
        ),
        _column("Endpoints", ".status.endpoints", "Assigned addresses and ports."),
        _column("Ready", f"{_READY}.status", "The Ready condition."),
        _column("Active", ".status.connections.active", "Sessions open now, all pods.", "integer"),
        _column(
            "Refused",
            ".status.connections.refused",
            "Refusals in the last 5 minutes, all pods.",
            "integer",
        ),
        _column("Reason", f"{_READY}.reason", "Why Ready is what it is.", priority=1),
        _column("Replicas", ".spec.replicas", "Listener pods.", "integer", priority=1),
        _column(
            "Per-Pod Cap",
            ".status.effectiveMaxConnectionsPerPod",
            "Connections each pod takes (0: unlimited).",
            "integer",
            priority=1,
        ),
        _column("Age", ".metadata.creationTimestamp", "Time since creation.", "date"),
    ]
    return _crd(
        kind="MailService",
        plural="mailservices",
        short_names=["msvc"],
        schema=schema,
        columns=columns,
        scale=True,
    )


def ipaddressgroup_crd() -> Schema:
    schema = _root(
        "A named list of hosts, networks, ranges and other groups that MailServices admit "
        "(spec.access.allowFrom).",
        structural_schema(models.IPAddressGroupSpec),
        structural_schema(models.IPAddressGroupStatus),
        spec_required=False,
    )
    columns = [
        _column("Ready", f"{_READY}.status", "The Ready condition."),
        _column("Reason", f"{_READY}.reason", "Why Ready is what it is.", priority=1),
        _column("CIDRs", ".status.cidrs", "The resolved CIDRs.", priority=1),
        _column("Age", ".metadata.creationTimestamp", "Time since creation.", "date"),
    ]
    return _crd(
        kind="IPAddressGroup",
        plural="ipaddressgroups",
        short_names=["ipg"],
        schema=schema,
        columns=columns,
        scale=False,
    )


def crds() -> list[Schema]:
    return [mailservice_crd(), ipaddressgroup_crd()]


HEADER = "# Generated from mailwarden/operator/models.py by scripts/gen-crds. Do not edit.\n"


def file_name(crd: Schema) -> str:
    group = crd["spec"]["group"]
    return f"{group}_{crd['spec']['names']['plural']}.yaml"


def dump(crd: Schema) -> str:
    return HEADER + yaml.safe_dump(crd, sort_keys=True, width=100, allow_unicode=True)


def rendered() -> dict[str, str]:
    """File name -> YAML text, as checked in under deploy/crds."""
    return {file_name(c): dump(c) for c in crds()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", metavar="DIR", type=pathlib.Path, help="write the YAML files")
    group.add_argument(
        "--check", metavar="DIR", type=pathlib.Path, help="fail if DIR differs from the models"
    )
    args = parser.parse_args(argv)
    stale = []
    for name, text in rendered().items():
        if args.write is not None:
            args.write.mkdir(parents=True, exist_ok=True)
            (args.write / name).write_text(text, encoding="utf-8")
            print(args.write / name)
        else:
            path = args.check / name
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path))
    if stale:
        print(
            "out of date (run scripts/gen-crds): " + ", ".join(stale),
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
