"""Conditions, the Ready chain and listen-conflict ordering, as pure functions."""

from __future__ import annotations

from mailwarden.operator import conditions, conflicts, groups, models, status
from mailwarden.operator.conditions import Reason


def test_a_condition_keeps_its_transition_time_while_the_status_holds() -> None:
    conds = conditions.set_condition(
        [], "Ready", "False", "Starting", "0 of 1", 1, timestamp="2026-01-01T00:00:00Z"
    )
    conds = conditions.set_condition(
        conds, "Ready", "False", "Starting", "still 0 of 1", 2, timestamp="2026-01-01T00:01:00Z"
    )
    (cond,) = conds
    assert cond["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert (cond["message"], cond["observedGeneration"]) == ("still 0 of 1", 2)
    conds = conditions.set_condition(
        conds, "Ready", "True", "Running", "up", 2, timestamp="2026-01-01T00:02:00Z"
    )
    assert conds[0]["lastTransitionTime"] == "2026-01-01T00:02:00Z"


def test_setting_one_condition_leaves_the_others() -> None:
    conds = conditions.set_condition([], "Ready", "True", "Running", "", 1, timestamp="t1")
    conds = conditions.set_condition(conds, "Stalled", "False", "Reconciled", "", 1, timestamp="t1")
    conds = conditions.set_condition(conds, "Ready", "False", "Stopped", "", 2, timestamp="t2")
    assert [(c["type"], c["status"]) for c in conds] == [("Ready", "False"), ("Stalled", "False")]


def facts(**kw: object) -> status.Facts:
    base: dict[str, object] = dict(
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
    return status.Facts(**base)  # type: ignore[arg-type]


def test_ready_when_every_check_passes() -> None:
    assert status.verdict(facts()) is None
    assert status.state_of(facts()) == "Running"


def test_the_first_failing_check_gives_the_reason() -> None:
    missing_and_cycle = groups.Resolution(cidrs=(), missing=("x",), cycles=(("a", "b", "a"),))
    holder = conflicts.Claimant("ns", "a", "t0", frozenset({("192.0.2.1", 25)}))
    worst = facts(
        resolution=missing_and_cycle,
        lost={("192.0.2.1", 25): holder},
        running=False,
        available_replicas=0,
        backend_error="Connection refused",
        apply_failure=status.ApplyFailure("Service", "s", 422, "invalid"),
        deployment_failures={
            Reason.PROGRESS_DEADLINE_EXCEEDED: "deadline",
            Reason.REPLICA_FAILURE: "quota",
        },
        pod_failures={Reason.IMAGE_PULL_BACK_OFF: "pull", Reason.CRASH_LOOP_BACK_OFF: "crash"},
        foreign=("Service x is controlled by Example y (uid)",),
        pending=("the load balancer to assign 192.0.2.1",),
    )
    order = []
    checks = list(status.CHECKS)
    f = worst
    while (v := status.verdict(f, checks)) is not None:
        order.append(v.reason)
        checks = checks[1:]
    assert order == [
        Reason.GROUP_NOT_FOUND,
        Reason.GROUP_CYCLE,
        Reason.LISTEN_CONFLICT,
        Reason.OWNED_ELSEWHERE,
        Reason.APPLY_FAILED,
        Reason.STOPPED,
        Reason.PROGRESS_DEADLINE_EXCEEDED,
        Reason.IMAGE_PULL_BACK_OFF,
        Reason.BACKEND_UNREACHABLE,
        Reason.STARTING,
        Reason.ADDRESS_PENDING,
    ]


def test_starting_until_the_rollout_is_observed_and_available() -> None:
    assert status.verdict(facts(rollout_observed=False)).reason == Reason.STARTING  # type: ignore[union-attr]
    assert status.verdict(facts(replicas=2, available_replicas=1)).reason == Reason.STARTING  # type: ignore[union-attr]
    assert status.state_of(facts(available_replicas=0)) == "Starting"
    assert status.state_of(facts(running=False)) == "Stopped"


def test_the_earlier_claimant_keeps_the_address() -> None:
    a = conflicts.Claimant("ns", "a", "2026-01-01T00:00:01Z", frozenset({("192.0.2.1", 25)}))
    b = conflicts.Claimant("ns", "b", "2026-01-01T00:00:00Z", frozenset({("192.0.2.1", 25)}))
    c = conflicts.Claimant(
        "ns", "c", "2026-01-01T00:00:00Z", frozenset({("192.0.2.1", 25), ("192.0.2.2", 25)})
    )
    assert conflicts.lost(b, [a, b, c]) == {}  # earliest, and first by name on a tie
    assert conflicts.lost(c, [a, b, c]) == {("192.0.2.1", 25): b}
    assert conflicts.lost(a, [a, b, c]) == {("192.0.2.1", 25): b}


def test_only_fixed_addresses_are_claimed() -> None:
    spec = models.MailServiceSpec.model_validate(
        {
            "service": "SMTP",
            "backend": {"host": "b"},
            "listen": [{"port": 25}, {"address": "192.0.2.1"}, {"address": "::1", "port": 2525}],
        }
    )
    assert conflicts.claims(spec) == {("192.0.2.1", 25), ("::1", 2525)}
    cluster_ip = spec.model_copy(update={"expose": models.Expose(type="ClusterIP")})
    assert conflicts.claims(cluster_ip) == frozenset()


def test_group_status_is_resolved_or_says_why_not() -> None:
    specs = {
        "a": models.IPAddressGroupSpec.model_validate(
            {"items": [{"host": "192.0.2.1"}, {"group": "b"}]}
        ),
        "b": models.IPAddressGroupSpec.model_validate({"items": [{"group": "a"}]}),
        "c": models.IPAddressGroupSpec.model_validate({"items": [{"host": "192.0.2.3"}]}),
    }
    ok = status.ip_address_group("c", specs, 1, {}, timestamp="t")
    assert ok["cidrs"] == ["192.0.2.3/32"]
    cyclic = status.ip_address_group("a", specs, 1, {}, timestamp="t")
    assert cyclic["cidrs"] == []
    ready = conditions.get(cyclic["conditions"], "Ready")
    assert ready is not None and ready["reason"] == Reason.GROUP_CYCLE


def test_a_fixed_address_counts_only_when_the_load_balancer_reports_it() -> None:
    from mailwarden.operator import children as children_mod

    msvc = models.MailService.model_validate(
        {
            "metadata": {"name": "smtp", "namespace": "mail"},
            "spec": {
                "service": "SMTP",
                "listen": [{"address": "192.0.2.25"}],
                "backend": {"host": "b"},
            },
        }
    )
    built = children_mod.build(msvc, {})
    name = built.listeners[0].name

    def seen(ingress: list[dict[str, str]]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        live = {"status": {"loadBalancer": {"ingress": ingress}}}
        return status.addresses(built, {name: live})

    assert seen([]) == ((), ("the load balancer to assign 192.0.2.25 (Service " + name + ")",))
    assert seen([{"ip": "203.0.113.9"}])[0] == ()  # another address is not the one asked for
    assert seen([{"ip": "192.0.2.25"}]) == (("192.0.2.25:25",), ())
    # An AWS NLB reports a DNS name only (its Elastic IPs are given by allocation).
    assert seen([{"hostname": "nlb-1.elb.example.com"}]) == (("nlb-1.elb.example.com:25",), ())
