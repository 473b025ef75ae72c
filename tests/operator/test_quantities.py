"""No write loops over resource quantities (issue 10 point 6): the API server stores them in
canonical form, and the operator compares by value. The emulator canonicalises as the API
server does (kubeemu/quantities.py, after kubernetes/apimachinery
pkg/api/resource/quantity.go)."""

from __future__ import annotations

import time

import pytest

from kubeemu import quantities
from mailwarden.operator import apply, naming
from tests.operator.resources import MW, mailservice, ready
from tests.support.operator import Client, eventually

# Written -> stored, as apimachinery's Quantity serialises them (its quantity_test.go has
# these among its canonicalisation cases).
CANONICAL = {
    "0.5": "500m",
    "1.5": "1500m",
    "1000m": "1",
    "100m": "100m",
    "1000": "1k",
    "1500": "1500",
    "1024Mi": "1Gi",
    "1024Ki": "1Mi",
    "1.5Gi": "1536Mi",
    "0.1Ki": "102400m",  # binary below 1024: written as decimal
    "512Mi": "512Mi",
    "2e3": "2e3",
    "1.5e3": "1500",
    "0.0001": "100u",
    "0": "0",
    "0Mi": "0",
    "-1000m": "-1",
}


@pytest.mark.parametrize(("written", "stored"), sorted(CANONICAL.items()))
def test_the_emulator_stores_quantities_as_the_api_server_does(written: str, stored: str) -> None:
    assert quantities.canonical(written) == stored
    assert quantities.canonical(stored) == stored  # canonical is a fixed point


def test_a_bad_quantity_is_refused() -> None:
    with pytest.raises(quantities.QuantityError):
        quantities.canonical("1.5.5Gi")
    with pytest.raises(quantities.QuantityError):
        quantities.canonical("12Qi")


def test_the_operator_compares_quantities_by_value_and_nothing_else() -> None:
    desired = {"resources": {"requests": {"cpu": "0.5", "memory": "1024Mi"}}, "image": "1"}
    live = {"resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}, "image": "1"}
    assert apply.contains(live, desired)
    assert not apply.contains({**live, "image": "1000m"}, desired)  # not a quantity field
    assert not apply.contains(
        {"resources": {"requests": {"cpu": "501m", "memory": "1Gi"}}, "image": "1"}, desired
    )


def test_non_canonical_quantities_are_written_once_then_left_alone(kube: Client, ns: str) -> None:
    resources = {
        "requests": {"cpu": "0.5", "memory": "1024Mi"},
        "limits": {"cpu": "1000m", "memory": "1.5Gi"},
    }
    kube.apply(mailservice(ns, "smtp", resources=resources))
    eventually(lambda: ready(kube, ns, "smtp"))
    dep = kube.get("apps/v1", "Deployment", ns, naming.base("smtp"))
    assert dep is not None
    stored = dep["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert stored == {
        "requests": {"cpu": "500m", "memory": "1Gi"},
        "limits": {"cpu": "1", "memory": "1536Mi"},
    }
    # More reconciliations: a label on the MailService (an update), and a hand edit of
    # something else on the Deployment that the operator puts back.
    kube.patch(MW, "MailService", ns, "smtp", {"metadata": {"labels": {"team": "mail"}}})
    kube.patch("apps/v1", "Deployment", ns, naming.base("smtp"), {"spec": {"replicas": 3}})
    eventually(lambda: _replicas(kube, ns, 1))
    time.sleep(1)
    dep = kube.get("apps/v1", "Deployment", ns, naming.base("smtp"))
    assert dep is not None
    # generation 1: created; 2: the hand edit; 3: put back. No write for the quantities.
    assert dep["metadata"]["generation"] == 3
    updated = [
        e
        for e in kube.list("v1", "Event", ns)
        if e["reason"] == "Updated" and "Deployment" in e["message"]
    ]
    assert len(updated) == 1  # the put-back, nothing more


def _replicas(kube: Client, ns: str, n: int) -> None:
    dep = kube.get("apps/v1", "Deployment", ns, naming.base("smtp"))
    assert dep is not None and dep["spec"]["replicas"] == n
