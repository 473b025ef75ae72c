"""The chart's ValidatingAdmissionPolicy (rbac.admissionPolicy.enabled): the operator's service
account may write only objects labelled as managed by it. Its CEL is evaluated with cel-python
(as the CRDs' rules are, tests/support/crdcheck.py) against admission requests as the API
server builds them for a policy: `object` (null on DELETE), `oldObject` (null on CREATE) and
`request` (https://kubernetes.io/docs/reference/access-authn-authz/validating-admission-policy/
#validation-expression)."""

from __future__ import annotations

from typing import Any

import pytest

from kubeemu import crdcheck
from mailwarden.operator import naming
from tests.deploy.tools import by_kind, render

OPERATOR = "system:serviceaccount:mail:mw-mailwarden"
MANAGED = {naming.LABEL_MANAGED_BY: naming.MANAGED_BY}


def policy() -> dict[str, Any]:
    objs = render(sets=("rbac.admissionPolicy.enabled=true",))
    (vap,) = by_kind(objs, "ValidatingAdmissionPolicy")
    (binding,) = by_kind(objs, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["policyName"] == vap["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    return vap  # type: ignore[no-any-return]


def configmap(labels: dict[str, str] | None, namespace: str = "kube-system") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "coredns", "namespace": namespace}
    if labels is not None:
        meta["labels"] = labels
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {}}


def admitted(
    vap: dict[str, Any],
    operation: str,
    new: dict[str, Any] | None,
    old: dict[str, Any] | None,
    user: str = OPERATOR,
) -> bool:
    activation = {
        "request": {"operation": operation, "userInfo": {"username": user}},
        "object": new,
        "oldObject": old,
    }
    for cond in vap["spec"]["matchConditions"]:
        if not bool(crdcheck.evaluate(cond["expression"], activation)):
            return True  # the policy does not apply to this request
    return all(
        bool(crdcheck.evaluate(v["expression"], activation)) for v in vap["spec"]["validations"]
    )


CASES = [
    ("CREATE", configmap(MANAGED), None, True),
    ("CREATE", configmap(None), None, False),
    ("CREATE", configmap({"app": "coredns"}), None, False),
    ("CREATE", configmap({naming.LABEL_MANAGED_BY: "Helm"}), None, False),
    ("UPDATE", configmap(MANAGED), configmap(MANAGED), True),
    # Taking over someone else's object by adding the label.
    ("UPDATE", configmap(MANAGED), configmap({"app": "coredns"}), False),
    ("UPDATE", configmap(MANAGED), configmap(None), False),
    # Dropping the label from its own object is a change it may make; the next write is not.
    ("UPDATE", configmap(None), configmap(MANAGED), False),
    ("DELETE", None, configmap(MANAGED), True),
    ("DELETE", None, configmap(None), False),
]


@pytest.mark.parametrize(("operation", "new", "old", "ok"), CASES)
def test_the_operator_may_write_only_objects_it_manages(
    operation: str, new: Any, old: Any, ok: bool
) -> None:
    assert admitted(policy(), operation, new, old) is ok


def test_anyone_else_is_not_concerned() -> None:
    vap = policy()
    assert admitted(vap, "DELETE", None, configmap(None), user="system:admin")
    assert admitted(vap, "CREATE", configmap(None), None, user="system:serviceaccount:mail:other")


def test_the_policy_covers_every_kind_the_operator_writes() -> None:
    """Every resource the chart's RBAC lets the operator create, patch or delete, but its own
    custom resources (and their status) and Events, is matched by the policy."""
    objs = render(sets=("rbac.admissionPolicy.enabled=true",))
    (role,) = [r for r in by_kind(objs, "ClusterRole") if r["metadata"]["name"] == "mw-mailwarden"]
    writes = {
        (group, resource)
        for rule in role["rules"]
        if {"create", "patch", "delete", "update"} & set(rule["verbs"])
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        if group != "mailwarden.io" and resource != "events"
    }
    vap = policy()
    matched = {
        (group, resource)
        for rule in vap["spec"]["matchConstraints"]["resourceRules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        if {"CREATE", "UPDATE", "DELETE"} <= set(rule["operations"])
    }
    assert writes and writes <= matched
    assert vap["spec"]["failurePolicy"] == "Fail"


def test_every_child_the_operator_builds_carries_the_label_the_policy_asks_for() -> None:
    from mailwarden.operator import children, models

    msvc = models.MailService.model_validate(
        {
            "metadata": {"name": "smtp", "namespace": "mail", "uid": "u1"},
            "spec": {"service": "SMTP", "backend": {"host": "postfix"}, "replicas": 2},
        }
    )
    built = children.build(msvc, {})
    kinds = {obj["kind"] for obj in built.all}
    assert {"ServiceAccount", "Role", "RoleBinding", "Deployment", "ConfigMap"} <= kinds
    vap = policy()
    for obj in built.all:
        assert admitted(vap, "CREATE", obj, None), obj["kind"]


def test_off_by_default() -> None:
    assert not by_kind(render(), "ValidatingAdmissionPolicy")
