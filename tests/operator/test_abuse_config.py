"""The abuse defence as the operator renders it: rateLimit and autoBan reach the listener's
configuration, exemptFrom resolved to CIDRs like allowFrom, and changes to the exempt group
(or a group nested in it) reach every MailService that names it."""

from __future__ import annotations

from tests.operator.resources import group, listener_config, mailservice, ready
from tests.support.operator import Client, eventually


def test_rate_limit_and_auto_ban_reach_the_listener_config(kube: Client, ns: str) -> None:
    kube.apply(group(ns, "office", {"network": "192.0.2.0/24"}))
    kube.apply(
        mailservice(
            ns,
            "imap",
            service="IMAP",
            access={
                "rateLimit": {"connectionsPerMinute": 30},
                "autoBan": {
                    "afterFailures": 5,
                    "withinSeconds": 60,
                    "banSeconds": 600,
                    "exemptFrom": "office",
                    "ipv6PrefixLength": 56,
                },
            },
        )
    )
    eventually(lambda: ready(kube, ns, "imap"))
    svc = listener_config(kube, ns, "imap").services[0]
    assert svc.rate_limit.connections_per_minute == 30
    assert svc.rate_limit.ipv6_prefix_length == 64
    assert svc.auto_ban is not None
    assert (svc.auto_ban.after_failures, svc.auto_ban.within_seconds) == (5, 60)
    assert svc.auto_ban.ban_seconds == 600
    assert svc.auto_ban.ipv6_prefix_length == 56
    assert svc.auto_ban.exempt == ("192.0.2.0/24",)
    assert svc.allow is None  # exemptFrom does not restrict who may connect


def test_a_change_to_the_exempt_group_or_a_nested_one_reaches_the_config(
    kube: Client, ns: str
) -> None:
    kube.apply(group(ns, "vpn", {"host": "198.51.100.7"}))
    kube.apply(group(ns, "office", {"network": "192.0.2.0/24"}, {"group": "vpn"}))
    kube.apply(
        mailservice(ns, "sub", service="Submission", access={"autoBan": {"exemptFrom": "office"}})
    )
    eventually(lambda: ready(kube, ns, "sub"))

    def exempt() -> tuple[str, ...]:
        ban = listener_config(kube, ns, "sub").services[0].auto_ban
        assert ban is not None
        return ban.exempt

    assert exempt() == ("192.0.2.0/24", "198.51.100.7/32")
    kube.apply(group(ns, "vpn", {"host": "198.51.100.8"}))

    def spread() -> None:
        assert exempt() == ("192.0.2.0/24", "198.51.100.8/32")

    eventually(spread)


def test_without_the_exempt_group_nobody_is_exempt_and_the_service_still_runs(
    kube: Client, ns: str
) -> None:
    kube.apply(mailservice(ns, "pop", service="POP3", access={"autoBan": {"exemptFrom": "nope"}}))
    eventually(lambda: ready(kube, ns, "pop"))
    ban = listener_config(kube, ns, "pop").services[0].auto_ban
    assert ban is not None and ban.exempt == ()
    assert listener_config(kube, ns, "pop").services[0].allow is None
