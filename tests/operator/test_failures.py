"""Failures reach the MailService's status (kstatus conditions) and its Events, once per
transition: children the API server refuses (issue 10 point 2), and listener Deployments and
pods in trouble (point 3). The operator runs for real against the emulator; admission is
played by kubeemu/admission.py, the Deployment controller and the kubelet by the test
writing their status fields."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from kubeemu import admission
from kubeemu.emulator import EmulatorThread
from mailwarden.operator import groups, naming
from mailwarden.operator import status as status_mod
from mailwarden.operator.conditions import READY_FALSE, Reason
from tests.operator.resources import MW, condition, mailservice, ready
from tests.support.operator import Client, eventually

# -- each check speaks as the reason table says ---------------------------------------------


def facts(**kw: Any) -> status_mod.Facts:
    base: dict[str, Any] = dict(
        generation=1,
        running=True,
        replicas=1,
        resolution=None,
        lost={},
        current_replicas=1,
        available_replicas=1,
        updated_replicas=1,
        rollout_observed=True,
    )
    base.update(kw)
    return status_mod.Facts(**base)


CASES: dict[str, dict[str, Any]] = {
    Reason.GROUP_NOT_FOUND: dict(
        resolution=groups.Resolution(cidrs=(), missing=("x",), uses=frozenset({"x"}))
    ),
    Reason.GROUP_CYCLE: dict(
        resolution=groups.Resolution(cidrs=(), cycles=(("a", "b", "a"),), uses=frozenset())
    ),
    Reason.LISTEN_CONFLICT: dict(
        lost={
            ("192.0.2.1", 25): __import__(
                "mailwarden.operator.conflicts"
            ).operator.conflicts.Claimant("ns", "a", "t", frozenset())
        }
    ),
    Reason.APPLY_FAILED: dict(apply_failure=status_mod.ApplyFailure("Service", "s", 422, "no")),
    Reason.STOPPED: dict(running=False, replicas=0),
    Reason.PROGRESS_DEADLINE_EXCEEDED: dict(
        deployment_failures={Reason.PROGRESS_DEADLINE_EXCEEDED: "timed out"}
    ),
    Reason.REPLICA_FAILURE: dict(deployment_failures={Reason.REPLICA_FAILURE: "quota"}),
    Reason.CRASH_LOOP_BACK_OFF: dict(pod_failures={Reason.CRASH_LOOP_BACK_OFF: "crash"}),
    Reason.IMAGE_PULL_BACK_OFF: dict(pod_failures={Reason.IMAGE_PULL_BACK_OFF: "pull"}),
    Reason.BACKEND_UNREACHABLE: dict(backend="b:25", backend_error="Connection refused"),
    Reason.STARTING: dict(available_replicas=0),
}


@pytest.mark.parametrize("reason", sorted(CASES))
def test_each_check_sets_stalled_and_reconciling_as_the_reason_table_says(reason: str) -> None:
    v = status_mod.verdict(facts(**CASES[reason]))
    assert v is not None and v.reason == reason
    meaning = READY_FALSE[reason]
    assert (v.stalled, v.reconciling) == (meaning.stalled, meaning.reconciling)


def test_a_quota_refusal_waits_while_other_refusals_need_an_edit() -> None:
    quota = status_mod.ApplyFailure("Deployment", "d", 403, "exceeded quota: q, requested: 1")
    v = status_mod.verdict(facts(apply_failure=quota))
    assert v is not None and (v.reason, v.stalled, v.reconciling) == (
        Reason.APPLY_FAILED,
        False,
        True,
    )
    rbac = status_mod.ApplyFailure("Deployment", "d", 403, 'cannot create "deployments"')
    v = status_mod.verdict(facts(apply_failure=rbac))
    assert v is not None and (v.stalled, v.reconciling) == (True, False)


# -- the operator against the emulator ------------------------------------------------------


@pytest.fixture
def no_external_ips(emulator: EmulatorThread) -> Iterator[admission.NoExternalIPs]:
    assert emulator.emulator is not None
    policy = admission.NoExternalIPs()
    emulator.emulator.policies.append(policy)
    yield policy
    emulator.emulator.policies.remove(policy)


def warnings(kube: Client, ns: str, name: str, reason: str) -> int:
    return sum(
        1
        for e in kube.list("v1", "Event", ns)
        if e["involvedObject"]["name"] == name and e["reason"] == reason and e["type"] == "Warning"
    )


def test_a_child_refused_by_an_admission_policy_reaches_the_status_without_a_retry_loop(
    kube: Client, ns: str, emulator: EmulatorThread, no_external_ips: admission.NoExternalIPs
) -> None:
    """A NodePort Service on a fixed address carries externalIPs, which the policy denies
    (422). The other children are applied, the status says why with the API server's own
    words, Stalled (an edit is needed), one Warning, and the Service is not asked for again
    and again."""
    assert emulator.emulator is not None
    kube.apply(
        mailservice(ns, "smtp", listen=[{"address": "192.0.2.25"}], expose={"type": "NodePort"})
    )
    obj = eventually(lambda: ready(kube, ns, "smtp", Reason.APPLY_FAILED))
    message = condition(obj, "Ready")["message"]
    assert "ValidatingAdmissionPolicy 'no-external-ips'" in message
    assert "externalIPs are not allowed" in message
    listener = naming.address_listener("192.0.2.25")
    assert listener in message and "(422)" in message
    assert condition(obj, "Stalled")["status"] == "True"
    assert condition(obj, "Reconciling")["status"] == "False"
    # Everything else was applied anyway.
    assert kube.get("apps/v1", "Deployment", ns, listener) is not None
    assert kube.get("v1", "ConfigMap", ns, listener) is not None
    eventually(lambda: _equals(warnings(kube, ns, "smtp", Reason.APPLY_FAILED), 1))
    # No hot retry loop. The Deployment's rollout (its status events) may reconcile once
    # more; after that, over two seconds, no further attempt at the Service.
    tried = _settled(lambda: no_external_ips.denied)
    assert tried <= 3
    time.sleep(2)
    assert no_external_ips.denied == tried
    assert warnings(kube, ns, "smtp", Reason.APPLY_FAILED) == 1
    # The edit: without the fixed address, nothing is refused and it runs.
    kube.apply(mailservice(ns, "smtp", listen=[{"port": 25}], expose={"type": "NodePort"}))
    obj = eventually(lambda: ready(kube, ns, "smtp"))
    assert condition(obj, "Stalled")["status"] == "False"


def test_a_quota_refusal_is_retried_with_backoff_until_quota_frees(
    kube: Client, ns: str, emulator: EmulatorThread
) -> None:
    assert emulator.emulator is not None
    quota = admission.DeploymentQuota(ns)
    emulator.emulator.policies.append(quota)
    try:
        kube.apply(mailservice(ns, "imap", service="IMAP"))
        obj = eventually(lambda: ready(kube, ns, "imap", Reason.APPLY_FAILED))
        assert "exceeded quota: deployments" in condition(obj, "Ready")["message"]
        assert condition(obj, "Reconciling")["status"] == "True"
        assert condition(obj, "Stalled")["status"] == "False"
        eventually(lambda: _at_least(quota.denied, 2), timeout=10)  # retried...
        time.sleep(1.5)
        assert quota.denied <= 5  # ...with backoff (1 s, 2 s, 4 s), not in a loop
        quota.active = False
        eventually(lambda: ready(kube, ns, "imap"), timeout=20)
    finally:
        emulator.emulator.policies.remove(quota)


def test_server_errors_are_retried_and_the_status_is_written_meanwhile(
    kube: Client, ns: str, emulator: EmulatorThread
) -> None:
    assert emulator.emulator is not None
    emulator.emulator.faults[("POST", "services")] = 2
    kube.apply(mailservice(ns, "pop3", service="POP3"))
    # The status is there before the Service is: a failing child does not hold it back.
    obj = eventually(lambda: _has_status(kube, ns, "pop3"))
    assert kube.get("v1", "Service", ns, naming.base("pop3")) is None
    assert condition(obj, "Stalled")["status"] == "False"
    eventually(lambda: ready(kube, ns, "pop3"), timeout=20)
    assert emulator.emulator.faults[("POST", "services")] == 0


def _settled(read: Any, quiet: float = 0.7, timeout: float = 10.0) -> int:
    """The value once it has not changed for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    value, since = read(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = read()
        if now != value:
            value, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return int(value)
    raise AssertionError(f"still changing after {timeout} s: {value}")


def _has_status(kube: Client, ns: str, name: str) -> dict[str, Any]:
    obj = kube.get(MW, "MailService", ns, name)
    assert obj is not None and (obj.get("status") or {}).get("conditions"), obj
    return obj


def _equals(a: int, b: int) -> None:
    assert a == b, (a, b)


def _at_least(a: int, b: int) -> None:
    assert a >= b, (a, b)


# -- Deployments and pods in trouble --------------------------------------------------------


def _deployment_status(kube: Client, ns: str, name: str, conditions: list[dict[str, Any]]) -> None:
    """As the Deployment controller reports it."""
    dep = kube.get("apps/v1", "Deployment", ns, naming.base(name))
    assert dep is not None
    status = {**(dep.get("status") or {}), "conditions": conditions}
    r = kube.http.patch(
        kube.path("apps/v1", "Deployment", ns, naming.base(name)) + "/status",
        json={"status": status},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert r.status_code < 300, r.text


def test_a_deployment_past_its_progress_deadline_is_stalled_with_one_warning(
    kube: Client, ns: str
) -> None:
    kube.apply(mailservice(ns, "smtp"))
    eventually(lambda: ready(kube, ns, "smtp"))
    deadline = {
        "type": "Progressing",
        "status": "False",
        "reason": "ProgressDeadlineExceeded",
        "message": 'ReplicaSet "mailwarden-smtp-5d8f" has timed out progressing.',
    }
    _deployment_status(kube, ns, "smtp", [deadline])
    obj = eventually(lambda: ready(kube, ns, "smtp", Reason.PROGRESS_DEADLINE_EXCEEDED))
    assert "timed out progressing" in condition(obj, "Ready")["message"]
    assert condition(obj, "Stalled")["status"] == "True"
    eventually(lambda: _equals(warnings(kube, ns, "smtp", Reason.PROGRESS_DEADLINE_EXCEEDED), 1))
    # More reconciliations in the same state (a status change of the Deployment that is not
    # a transition of ours): still one Warning.
    _deployment_status(kube, ns, "smtp", [{**deadline, "lastUpdateTime": "later"}])
    _deployment_status(
        kube, ns, "smtp", [deadline, {"type": "Available", "status": "False", "reason": "x"}]
    )
    time.sleep(1)
    assert warnings(kube, ns, "smtp", Reason.PROGRESS_DEADLINE_EXCEEDED) == 1
    # ReplicaFailure (pods cannot be created): it waits, it is not stuck.
    _deployment_status(
        kube,
        ns,
        "smtp",
        [
            {
                "type": "ReplicaFailure",
                "status": "True",
                "reason": "FailedCreate",
                "message": 'pods "mailwarden-smtp-5d8f-" is forbidden: violates PodSecurity',
            }
        ],
    )
    obj = eventually(lambda: ready(kube, ns, "smtp", Reason.REPLICA_FAILURE))
    assert "FailedCreate" in condition(obj, "Ready")["message"]
    assert condition(obj, "Reconciling")["status"] == "True"
    eventually(lambda: _equals(warnings(kube, ns, "smtp", Reason.REPLICA_FAILURE), 1))
    _deployment_status(
        kube,
        ns,
        "smtp",
        [{"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}],
    )
    eventually(lambda: ready(kube, ns, "smtp"))


def _pod(ns: str, name: str, waiting: dict[str, str] | None) -> dict[str, Any]:
    """A listener pod as the kubelet reports it: a container waiting on `waiting`, or running."""
    state: dict[str, Any] = {"waiting": waiting} if waiting else {"running": {}}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{naming.base(name)}-5d8f-x2k9q",
            "namespace": ns,
            "labels": naming.labels(naming.base(name), name),
        },
        "spec": {"containers": [{"name": "listener", "image": "mailwarden-listener:test"}]},
        "status": {"containerStatuses": [{"name": "listener", "state": state}]},
    }


def _kubelet(kube: Client, ns: str, name: str, waiting: dict[str, str] | None) -> None:
    """The kubelet writing the pod's status (pods have no status subresource here)."""
    pod = _pod(ns, name, waiting)
    kube.patch("v1", "Pod", ns, pod["metadata"]["name"], {"status": pod["status"]})


def test_listener_pods_in_back_off_show_in_the_status_once_per_transition(
    kube: Client, ns: str
) -> None:
    kube.apply(mailservice(ns, "imap", service="IMAP"))
    eventually(lambda: ready(kube, ns, "imap"))
    crash = {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}
    kube.apply(_pod(ns, "imap", crash))
    obj = eventually(lambda: ready(kube, ns, "imap", Reason.CRASH_LOOP_BACK_OFF))
    message = condition(obj, "Ready")["message"]
    assert "container listener" in message and "back-off 40s" in message
    assert condition(obj, "Reconciling")["status"] == "True"
    assert condition(obj, "Stalled")["status"] == "False"
    eventually(lambda: _equals(warnings(kube, ns, "imap", Reason.CRASH_LOOP_BACK_OFF), 1))
    # The kubelet updates the message (a longer back-off): no new transition, no new Event.
    _kubelet(kube, ns, "imap", {**crash, "message": "back-off 80s restarting failed container"})
    time.sleep(1)
    assert warnings(kube, ns, "imap", Reason.CRASH_LOOP_BACK_OFF) == 1
    # An image that cannot be pulled.
    _kubelet(kube, ns, "imap", {"reason": "ImagePullBackOff", "message": "Back-off pulling"})
    eventually(lambda: ready(kube, ns, "imap", Reason.IMAGE_PULL_BACK_OFF))
    eventually(lambda: _equals(warnings(kube, ns, "imap", Reason.IMAGE_PULL_BACK_OFF), 1))
    # Running again: Ready again.
    _kubelet(kube, ns, "imap", None)
    eventually(lambda: ready(kube, ns, "imap"))
