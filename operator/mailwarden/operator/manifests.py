"""Reading MailService and IPAddressGroup manifests from files and folders: the same YAML a
user would `kubectl apply`. Other kinds in the same files are passed over."""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Iterable
from typing import Any

import pydantic
import yaml

from mailwarden.operator import models

SUFFIXES = (".yaml", ".yml", ".json")


class ManifestError(ValueError):
    pass


@dataclasses.dataclass
class Manifests:
    services: list[models.MailService] = dataclasses.field(default_factory=list)
    groups: list[models.IPAddressGroup] = dataclasses.field(default_factory=list)
    others: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def group_specs(self, namespace: str) -> dict[str, models.IPAddressGroupSpec]:
        return {g.metadata.name: g.spec for g in self.groups if g.metadata.namespace == namespace}


def files(paths: Iterable[pathlib.Path]) -> list[pathlib.Path]:
    out: list[pathlib.Path] = []
    for path in paths:
        if path.is_dir():
            out += sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
        elif path.exists():
            out.append(path)
        else:
            raise ManifestError(f"{path}: no such file or folder")
    return out


def load(paths: Iterable[pathlib.Path], default_namespace: str = "default") -> Manifests:
    result = Manifests()
    for path in files(paths):
        try:
            docs = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError as exc:
            raise ManifestError(f"{path}: not YAML: {exc}") from None
        for index, doc in enumerate(docs):
            for obj in _items(doc):
                _add(result, obj, f"{path} (document {index + 1})", default_namespace)
    return result


def _items(doc: Any) -> list[dict[str, Any]]:
    if not isinstance(doc, dict):
        return []
    if doc.get("kind", "").endswith("List") and isinstance(doc.get("items"), list):
        return [i for i in doc["items"] if isinstance(i, dict)]
    return [doc]


def _add(result: Manifests, obj: dict[str, Any], where: str, namespace: str) -> None:
    api, kind = obj.get("apiVersion"), obj.get("kind")
    if api != models.API_VERSION or kind not in ("MailService", "IPAddressGroup"):
        result.others.append(obj)
        return
    obj = dict(obj)
    meta = dict(obj.get("metadata") or {})
    meta.setdefault("namespace", namespace)
    obj["metadata"] = meta
    model: type[pydantic.BaseModel] = (
        models.MailService if kind == "MailService" else models.IPAddressGroup
    )
    try:
        parsed = model.model_validate(obj)
    except pydantic.ValidationError as exc:
        raise ManifestError(f"{where}: {kind} {meta.get('name')!r}: {explain(exc)}") from None
    if isinstance(parsed, models.MailService):
        result.services.append(parsed)
    elif isinstance(parsed, models.IPAddressGroup):
        result.groups.append(parsed)


def explain(exc: pydantic.ValidationError) -> str:
    """Validation errors with the field path in the resource's own (camelCase) names."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)
