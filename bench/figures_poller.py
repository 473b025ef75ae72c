"""The operator's live-figures polling alone, as a process of its own, for
`python -m bench.operator_scale --figures-only`: the same code the operator's task runs
(reconcile.read_figures over the listener pods, reconcile.write_figures for each
MailService), with the world read once from the API instead of kopf's indices, so that its
cost can be measured at 1,000 MailServices without the reconciliation of 1,000 MailServices
around it.

    python -m bench.figures_poller URL PERIOD SECONDS

Prints one JSON line per round: {"round": n, "cpu_s": CPU time so far, "writes": so far}."""

from __future__ import annotations

import asyncio
import json
import resource
import sys
from typing import Any

from mailwarden.operator import conditions, kube, models, poll, reconcile
from mailwarden.operator import pods as pods_mod
from mailwarden.operator import settings as settings_mod


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def main(url: str, period: float, seconds: float) -> None:
    settings = settings_mod.Settings(figures_seconds=period)
    api = kube.Api.for_url(url)
    ctx = reconcile.Context(api=api, settings=settings)
    bodies = await api.list(f"/apis/{models.API_VERSION}/mailservices")
    services: dict[tuple[str, str], Any] = {
        (b["metadata"]["namespace"], b["metadata"]["name"]): b for b in bodies
    }
    summaries = [pods_mod.summary(p) for p in await api.list("/api/v1/pods")]
    world = reconcile.World(services=services, groups={}, pods={("", ""): summaries})
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    writes = 0
    n = 0
    async with poll.session(settings.figures_concurrency) as http:
        while loop.time() < end:
            started = loop.time()
            outcomes = await reconcile.read_figures(ctx, world, http)
            stamp = conditions.now()
            for key, outcome in outcomes.items():
                writes += await reconcile.write_figures(ctx, key, world, outcome, stamp)
            n += 1
            print(json.dumps({"round": n, "cpu_s": cpu_s(), "writes": writes}), flush=True)
            await asyncio.sleep(max(0.0, period - (loop.time() - started)))
    api.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2]), float(sys.argv[3])))
