"""The chart's CRDs are deploy/crds, unchanged but for the chart's labels and keep policy."""

from __future__ import annotations

from typing import Any

import yaml

from tests.deploy.tools import CHART, CRDS, by_kind, render

CHART_CRDS = CHART / "files" / "crds"
KEEP = "helm.sh/resource-policy"
# Argo CD ignores Helm's keep policy; this stops its prune and its cascade delete.
ARGOCD = "argocd.argoproj.io/sync-options"


def crd_files() -> list[str]:
    files = sorted(p.name for p in CRDS.glob("*.yaml"))
    assert files, "deploy/crds holds no CRDs: run scripts/gen-crds"
    return files


def generated() -> dict[str, dict[str, Any]]:
    out = {}
    for name in crd_files():
        for doc in yaml.safe_load_all((CRDS / name).read_text()):
            if doc:
                out[doc["metadata"]["name"]] = doc
    return out


def test_chart_crd_files_are_a_verbatim_copy_of_deploy_crds() -> None:
    names = crd_files()
    assert sorted(p.name for p in CHART_CRDS.glob("*.yaml")) == names, (
        "the chart's CRD files differ from deploy/crds: run scripts/sync-chart-crds"
    )
    for name in names:
        assert (CHART_CRDS / name).read_bytes() == (CRDS / name).read_bytes(), (
            f"{name} differs from deploy/crds: run scripts/sync-chart-crds"
        )


def test_rendered_crds_equal_deploy_crds_plus_chart_labels_and_the_keep_policy() -> None:
    expected = generated()
    rendered = {c["metadata"]["name"]: c for c in by_kind(render(), "CustomResourceDefinition")}
    assert sorted(rendered) == sorted(expected)
    assert {"mailservices.mailwarden.io", "ipaddressgroups.mailwarden.io"} <= set(rendered)
    for name, crd in rendered.items():
        meta = crd["metadata"]
        assert meta["annotations"][KEEP] == "keep"
        assert meta["annotations"][ARGOCD] == "Prune=false,Delete=false"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "Helm"
        want = expected[name]
        want_meta = want.get("metadata", {})
        assert {k: v for k, v in meta["annotations"].items() if k != KEEP} == want_meta.get(
            "annotations", {}
        )
        assert want_meta.get("labels", {}).items() <= meta["labels"].items()
        assert crd["spec"] == want["spec"]
        assert crd["apiVersion"] == want["apiVersion"]


def test_crds_can_be_left_out_or_deleted_on_uninstall() -> None:
    crd_files()
    assert not by_kind(render(sets=("crds.enabled=false",)), "CustomResourceDefinition")
    crds = by_kind(render(sets=("crds.keep=false",)), "CustomResourceDefinition")
    assert crds
    assert all(KEEP not in c["metadata"].get("annotations", {}) for c in crds)
    assert all(ARGOCD not in c["metadata"].get("annotations", {}) for c in crds)


def test_generated_crds_tell_argo_cd_never_to_prune_or_delete_them() -> None:
    # deploy/crds is what an Argo CD Application syncing the plain manifests applies.
    for name, crd in generated().items():
        options = crd["metadata"]["annotations"][ARGOCD].split(",")
        assert {"Prune=false", "Delete=false"} <= set(options), name
