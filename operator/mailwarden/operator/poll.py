"""Reading the live figures of every listener pod, as CloudNativePG's operator reads its
instance managers' status over HTTP: one round at a time, at most every
MAILWARDEN_FIGURES_SECONDS, each pod's `GET /status` on its metrics port asked once per round
(a pod shared by several MailServices too), at most MAILWARDEN_FIGURES_CONCURRENCY at once,
each within MAILWARDEN_FIGURES_TIMEOUT. The pods (their addresses and labels) come from the
operator's index of listener pods, kept by its watch: a round makes no API request.

A pod that does not answer (refused, timed out, a broken answer) is only counted and named:
the round goes on, and the MailService's FiguresAvailable condition says which pods."""

from __future__ import annotations

import asyncio
import collections
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import aiohttp

from mailwarden.operator import figures, metrics, naming

Key = tuple[str, str]
# A status document is a few hundred bytes per service; more is not a listener talking.
MAX_ANSWER = 1024 * 1024

Answer = Mapping[str, Mapping[str, int]]


async def ask(
    http: aiohttp.ClientSession, pod: figures.Pod, port: int, seconds: float
) -> Answer | str:
    """The pod's parsed figures, or why there are none, in a few words."""
    host = f"[{pod.ip}]" if ":" in pod.ip else pod.ip
    try:
        async with asyncio.timeout(seconds):
            async with http.get(f"http://{host}:{port}/status", allow_redirects=False) as r:
                if r.status != 200:
                    return f"HTTP {r.status}"
                # The whole body, however it is cut into segments, up to the bound.
                body = bytearray()
                async for chunk in r.content.iter_chunked(64 * 1024):
                    body += chunk
                    if len(body) > MAX_ANSWER:
                        return "answer too long"
        return figures.parse(json.loads(body))
    except TimeoutError:
        return f"no answer within {seconds:g} s"
    except aiohttp.ClientConnectorError as exc:
        # asyncio words a refusal "Connect call failed (...)"; the errno says it better.
        errno = exc.os_error.errno
        return os.strerror(errno) if errno and errno > 0 else str(exc.os_error) or "no connection"
    except aiohttp.ClientError as exc:
        return _short(str(exc)) or type(exc).__name__
    except (ValueError, UnicodeDecodeError) as exc:  # not JSON, or figures.BadAnswer
        # The pod's own words (a service name) go into the condition: bounded.
        return f"not a status document ({_short(str(exc))})"


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def listener_pods(bodies: Iterable[Mapping[str, Any]]) -> dict[str, list[figures.Pod]]:
    """Running listener pods with an address, by namespace, each once."""
    out: dict[str, dict[str, figures.Pod]] = collections.defaultdict(dict)
    for body in bodies:
        labels = (body.get("metadata") or {}).get("labels") or {}
        pod = figures.pod_of(body)
        if pod is not None and labels.get(naming.LABEL_NAME) == naming.APP_NAME:
            out[pod.namespace][pod.name] = pod
    return {ns: list(pods.values()) for ns, pods in out.items()}


async def round_(
    bodies: Iterable[Mapping[str, Any]],
    keys: Sequence[Key],
    *,
    port: int,
    seconds: float,
    concurrency: int,
    http: aiohttp.ClientSession,
    listeners_of: Callable[[Key], Sequence[str]] | None = None,
) -> dict[Key, figures.Outcome]:
    """One round: the figures of every MailService in `keys`, from the listener pods among
    `bodies` (pod bodies or the operator's summaries of them). listeners_of: the listener
    Deployments serving a MailService (contract C5; default its own only)."""
    by_namespace: dict[str, list[Key]] = collections.defaultdict(list)
    for key in keys:
        by_namespace[key[0]].append(key)
    pods = listener_pods(bodies)
    limit = asyncio.Semaphore(concurrency)

    async def one(pod: figures.Pod) -> tuple[figures.Pod, Answer | str]:
        async with limit:
            result = await ask(http, pod, port, seconds)
        metrics.FIGURE_POLLS.labels("unreachable" if isinstance(result, str) else "answered").inc()
        return pod, result

    wanted = [p for ns, ps in pods.items() if ns in by_namespace for p in ps]
    asked = await asyncio.gather(*(one(p) for p in wanted))
    answers = {(p.namespace, p.name): result for p, result in asked}
    out: dict[Key, figures.Outcome] = {}
    for namespace, ns_keys in by_namespace.items():
        for key in ns_keys:
            listeners = listeners_of(key) if listeners_of else figures.listeners_of(*key)
            mine = [p for p in pods.get(namespace, ()) if figures.serves(p, key[1], listeners)]
            got = [answers[(p.namespace, p.name)] for p in mine]
            answered = [a for a in got if not isinstance(a, str)]
            out[key] = figures.Outcome(
                pods=len(mine),
                figures=figures.total(f"{key[0]}/{key[1]}", answered),
                unreachable={
                    p.name: a for p, a in zip(mine, got, strict=True) if isinstance(a, str)
                },
            )
    return out


def session(concurrency: int) -> aiohttp.ClientSession:
    """One HTTP client for every round: connections are not kept (a pod may go away at any
    time, and a kept connection per pod would hold a descriptor per pod)."""
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=True)
    return aiohttp.ClientSession(connector=connector, trust_env=False)
