"""The pure half of the live figures: reading a pod's /status answer, summing over the pods
of a MailService, status.connections and the FiguresAvailable condition, which pods serve a
MailService, and the settings that pace the polling."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import pytest

from mailwarden.operator import children, figures, models, naming, poll, settings


def answer(name: str = "mail/smtp", active: int = 1, **refusals: int) -> dict[str, Any]:
    return {
        "observedAt": "2026-01-01T00:00:00Z",
        "services": {
            name: {
                "active": active,
                "refusals": {k: refusals.get(k, 0) for k in figures.REFUSALS},
                "bannedAddresses": 0,
            }
        },
    }


def test_the_figures_of_a_service_are_summed_over_its_pods() -> None:
    pods = [
        figures.parse(answer(active=2, denied=1)),
        figures.parse(answer(active=3, overCap=4, backendDown=1)),
        figures.parse(answer("mail/other", active=7, denied=9)),
    ]
    assert figures.total("mail/smtp", pods) == {
        "active": 5,
        "refused": 6,
        "denied": 1,
        "overCap": 4,
        "overAddressCap": 0,
        "rateLimited": 0,
        "banned": 0,
        "backendDown": 1,
        "bannedAddresses": 0,
    }
    assert figures.total("mail/none", pods)["active"] == 0


def test_fields_a_listener_does_not_send_yet_count_as_zero() -> None:
    parsed = figures.parse({"services": {"mail/smtp": {"active": 1, "refusals": {"denied": 2}}}})
    assert parsed["mail/smtp"]["rateLimited"] == 0
    assert parsed["mail/smtp"]["bannedAddresses"] == 0


@pytest.mark.parametrize(
    "bad",
    [
        [],
        {"services": []},
        {"services": {"mail/smtp": 3}},
        {"services": {"mail/smtp": {"active": -1}}},
        {"services": {"mail/smtp": {"active": True}}},
        {"services": {"mail/smtp": {"active": 1.5}}},
        {"services": {"mail/smtp": {"refusals": {"denied": "2"}}}},
        {"services": {"mail/smtp": {"refusals": [1]}}},
    ],
)
def test_an_answer_that_is_not_a_status_document_is_refused(bad: Any) -> None:
    with pytest.raises(figures.BadAnswer):
        figures.parse(bad)


def test_observed_at_alone_is_no_change() -> None:
    outcome = figures.Outcome(pods=1, figures={"active": 1}, unreachable={})
    first = figures.connections(outcome, "2026-01-01T00:00:00Z")
    later = figures.connections(outcome, "2026-01-01T00:00:15Z")
    assert figures.same_figures(first, later)
    moved = figures.connections(
        figures.Outcome(pods=1, figures={"active": 2}, unreachable={}), "2026-01-01T00:00:15Z"
    )
    assert not figures.same_figures(first, moved)
    assert not figures.same_figures(None, first)


def test_the_condition_names_the_pods_that_did_not_answer() -> None:
    assert figures.condition(figures.Outcome(0, {}, {})) == (
        "True",
        figures.NO_PODS,
        "no listener pod is running: nothing to count",
    )
    assert figures.condition(figures.Outcome(3, {}, {}))[:2] == ("True", figures.PODS_ANSWERED)
    status, reason, message = figures.condition(
        figures.Outcome(3, {}, {"smtp-b": "connection refused", "smtp-a": "no answer within 2 s"})
    )
    assert (status, reason) == ("False", figures.PODS_UNREACHABLE)
    assert message.startswith(
        "2 of 3 listener pods did not answer: smtp-a (no answer within 2 s), "
        "smtp-b (connection refused)"
    )
    many = {f"smtp-{i}": "connection refused" for i in range(8)}
    _, _, message = figures.condition(figures.Outcome(8, {}, many))
    assert "smtp-4 (connection refused) and 3 more" in message
    assert "smtp-5" not in message


def pod(labels: dict[str, str], ip: str = "10.0.0.5", phase: str = "Running") -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "namespace": "mail", "labels": labels},
        "status": {"phase": phase, "podIP": ip},
    }


def test_which_pods_serve_a_mailservice() -> None:
    own = figures.pod_of(pod(naming.labels(naming.base("smtp"), "smtp")))
    assert own is not None
    assert figures.serves(own, "smtp", figures.listeners_of("mail", "smtp"))
    assert not figures.serves(own, "imap", figures.listeners_of("mail", "imap"))
    shared = figures.pod_of(pod({naming.LABEL_LISTENER: "mailwarden--192-0-2-25"}))
    assert shared is not None
    assert figures.serves(shared, "smtp", ("mailwarden--192-0-2-25",))
    assert not figures.serves(shared, "smtp", figures.listeners_of("mail", "smtp"))
    # Not asked: no address yet, or not running.
    assert figures.pod_of(pod(naming.labels(naming.base("smtp"), "smtp"), ip="")) is None
    assert figures.pod_of(pod(naming.labels(naming.base("smtp"), "smtp"), phase="Pending")) is None


def test_polling_settings_are_read_and_bad_values_refused() -> None:
    default = settings.Settings.from_env({})
    assert (default.figures_seconds, default.figures_timeout) == (15.0, 2.0)
    assert default.figures_concurrency == 32
    off = settings.Settings.from_env({"MAILWARDEN_FIGURES_SECONDS": "0"})
    assert off.figures_seconds == 0
    for env, name in (
        ({"MAILWARDEN_FIGURES_SECONDS": "soon"}, "MAILWARDEN_FIGURES_SECONDS"),
        ({"MAILWARDEN_FIGURES_SECONDS": "0.2"}, "MAILWARDEN_FIGURES_SECONDS"),
        ({"MAILWARDEN_FIGURES_TIMEOUT": "0"}, "MAILWARDEN_FIGURES_TIMEOUT"),
        ({"MAILWARDEN_FIGURES_TIMEOUT": "60"}, "MAILWARDEN_FIGURES_TIMEOUT"),
        ({"MAILWARDEN_FIGURES_CONCURRENCY": "0"}, "MAILWARDEN_FIGURES_CONCURRENCY"),
        ({"MAILWARDEN_FIGURES_CONCURRENCY": "many"}, "MAILWARDEN_FIGURES_CONCURRENCY"),
    ):
        with pytest.raises(settings.SettingsError, match=name):
            settings.Settings.from_env(env)


def test_the_network_policy_admits_the_operator_to_the_metrics_port() -> None:
    msvc = models.MailService.model_validate(
        {
            "metadata": {"name": "smtp", "namespace": "mail", "uid": "u"},
            "spec": {"service": "SMTP", "backend": {"host": "postfix"}},
        }
    )
    policy = children.build(
        msvc, {}, settings=settings.Settings(operator_namespace="mailwarden-system")
    ).network_policy
    assert {
        "from": [
            {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": "mailwarden-system"}
                },
                "podSelector": {"matchLabels": {"app.kubernetes.io/component": "operator"}},
            }
        ],
        "ports": [{"protocol": "TCP", "port": 9090}],
    } in policy["spec"]["ingress"]
    # Outside a cluster (no POD_NAMESPACE), or with the figures off: no such rule.
    for quiet in (
        settings.Settings(),
        settings.Settings(operator_namespace="x", figures_seconds=0),
    ):
        rules = children.build(msvc, {}, settings=quiet).network_policy["spec"]["ingress"]
        assert not any("podSelector" in f for r in rules for f in r.get("from", [])), rules
    assert settings.Settings.from_env({"POD_NAMESPACE": "ops"}).operator_namespace == "ops"


def _ask(handler: Any, seconds: float = 1.0) -> Any:
    """poll.ask against a real TCP server on loopback whose connections `handler` serves."""

    async def run() -> Any:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pod = figures.Pod("mail", "mailwarden-smtp-abc", "127.0.0.1", {})
        try:
            async with poll.session(4) as http:
                return await poll.ask(http, pod, port, seconds)
        finally:
            server.close()

    return asyncio.run(run())


def _http(body: bytes, status: str = "200 OK", pieces: int = 1) -> Any:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        )
        step = max(1, len(body) // pieces)
        for i in range(0, len(body), step):
            writer.write(body[i : i + step])
            await writer.drain()
            await asyncio.sleep(0.01)  # separate segments
        writer.close()

    return handle


def test_a_pod_answer_cut_into_segments_is_read_whole() -> None:
    doc = answer(active=4, denied=2)
    doc["services"].update(
        {f"mail/s{i}": answer(f"mail/s{i}")["services"][f"mail/s{i}"] for i in range(300)}
    )
    got = _ask(_http(json.dumps(doc).encode(), pieces=20))
    assert isinstance(got, dict), got
    assert got["mail/smtp"]["active"] == 4 and len(got) == 301


@pytest.mark.parametrize(
    ("handler", "why"),
    [
        (_http(b"{}", status="500 Internal Server Error"), "HTTP 500"),
        (_http(b"<html>not json</html>"), "not a status document"),
        (_http(b'{"services": {"mail/smtp": {"active": -3}}}'), "not a status document"),
        (_http(b" " * (poll.MAX_ANSWER + 10)), "answer too long"),
        (_http(b'{"services": {"' + b"x" * 5000 + b'": 1}}'), "not a status document"),
    ],
    ids=["server-error", "not-json", "negative-count", "too-long", "long-name"],
)
def test_a_pod_that_answers_something_else_is_named_with_why(handler: Any, why: str) -> None:
    got = _ask(handler)
    assert isinstance(got, str) and got.startswith(why), got
    assert len(got) < 120, got  # it goes into the condition's message


def test_a_pod_that_says_nothing_times_out_and_a_closed_port_is_refused() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers; returns when the operator gives up and closes
        writer.close()

    assert _ask(silent, seconds=0.3) == "no answer within 0.3 s"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused

        async def refused() -> Any:
            pod = figures.Pod("mail", "p", "127.0.0.1", {})
            async with poll.session(1) as http:
                return await poll.ask(http, pod, port, 1.0)

        got = asyncio.run(refused())
    assert got == "Connection refused", got
