"""`mailwarden render -f PATH...`: the objects the operator would create, as YAML, for review
and GitOps diffs. The same builders as the operator; without a cluster there is no uid, so
the ownerReferences the operator adds are left out (and said so)."""

from __future__ import annotations

import argparse
import sys

import yaml

from mailwarden.operator import children, conflicts, manifests, settings


def command(args: argparse.Namespace) -> int:
    try:
        found = manifests.load(args.filename, args.namespace)
    except manifests.ManifestError as exc:
        print(f"mailwarden render: {exc}", file=sys.stderr)
        return 2
    if not found.services:
        print("mailwarden render: no MailService in the manifests", file=sys.stderr)
        return 2
    try:
        config = settings.Settings.from_env()
    except settings.SettingsError as exc:
        print(f"mailwarden render: {exc}", file=sys.stderr)
        return 2
    services = [children.with_defaults(m, config.listener_defaults) for m in found.services]
    # Listen conflicts among the given MailServices: without creation times, file order
    # stands in for "created first".
    claimants = [conflicts.claimant(m, f"{i:08d}") for i, m in enumerate(services)]
    docs = []
    for msvc, me in zip(services, claimants, strict=True):
        built = children.build(
            msvc,
            found.group_specs(msvc.metadata.namespace),
            lost=conflicts.lost(me, claimants),
            settings=config,
        )
        name = f"{msvc.metadata.namespace}/{msvc.metadata.name}"
        for problem in built.rendered.problems:
            print(f"mailwarden render: {name}: {problem}; refusing every client", file=sys.stderr)
        for warning in built.warnings:
            print(f"mailwarden render: {name}: {warning.message}", file=sys.stderr)
        docs += built.all
    print("# Rendered by `mailwarden render`; in a cluster each object also gets an")
    print("# ownerReference to its MailService.")
    print(yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, default_flow_style=False), end="")
    return 0


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the listener configuration) as readable literal blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)
