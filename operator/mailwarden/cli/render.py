"""`mailwarden render -f PATH...`: the objects the operator would create, as YAML, for review
and GitOps diffs. The same builders as the operator; without a cluster there is no uid, so
the ownerReferences the operator adds are left out (and said so)."""

from __future__ import annotations

import argparse
import sys

import yaml

from mailwarden.operator import children, conflicts, listeners, manifests, settings


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
    members = [
        listeners.Member(m, me.created, conflicts.lost(me, claimants))
        for m, me in zip(services, claimants, strict=True)
    ]
    docs = []
    for namespace in sorted({m.metadata.namespace for m in services}):
        in_ns = [m for m in members if m.msvc.metadata.namespace == namespace]
        groups = found.group_specs(namespace)
        # One listener per fixed address (shared) and one per MailService for its other
        # ports: each rendered once, with all of its members.
        built = {
            name: children.build_listener(lst, groups, config)
            for name, lst in listeners.plan(in_ns).items()
        }
        for member in in_ns:
            mine = [built[lst.name] for lst in listeners.of_member(built_plan(built), member.name)]
            result = children.for_member(member, mine, groups, config)
            name = f"{namespace}/{member.name}"
            for problem in result.rendered.problems:
                print(
                    f"mailwarden render: {name}: {problem}; refusing every client",
                    file=sys.stderr,
                )
            for warning in result.warnings:
                print(f"mailwarden render: {name}: {warning.message}", file=sys.stderr)
        for lst in built.values():
            docs += lst.all
    print("# Rendered by `mailwarden render`: one listener (Deployment, ConfigMap, Service,")
    print("# NetworkPolicy) per fixed address, shared by the MailServices on it, and one per")
    print("# MailService for its ports without one. In a cluster each object also gets")
    print("# ownerReferences to its MailServices.")
    print(yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, default_flow_style=False), end="")
    return 0


def built_plan(
    built: dict[str, children.ListenerChildren],
) -> dict[str, listeners.Listener]:
    return {name: lst.listener for name, lst in built.items()}


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the listener configuration) as readable literal blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)
