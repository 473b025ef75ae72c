"""The operator's retry queue: one pending attempt per object, replaced by newer ones."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from mailwarden.operator import retries


def test_backoff_doubles_up_to_five_minutes() -> None:
    assert [retries.backoff(n) for n in range(4)] == [1.0, 2.0, 4.0, 8.0]
    assert retries.backoff(50) == retries.MAX_BACKOFF == 300.0


def test_a_newer_attempt_replaces_the_pending_one_and_cancel_drops_it() -> None:
    ran: list[str] = []

    async def scenario() -> None:
        pending = retries.Retries()

        def attempt(name: str) -> Callable[[], Awaitable[None]]:
            async def run() -> None:
                ran.append(name)

            return run

        pending.later("a", 0.05, attempt("first"))
        pending.later("a", 0.01, attempt("second"))  # replaces "first"
        pending.later("b", 0.01, attempt("other"))
        pending.later("c", 0.01, attempt("cancelled"))
        pending.cancel("c")
        assert len(pending) == 2 and pending.pending("a") and not pending.pending("c")
        await asyncio.sleep(0.2)
        assert len(pending) == 0
        pending.later("d", 60, attempt("never"))
        await pending.close()
        assert len(pending) == 0

    asyncio.run(scenario())
    assert sorted(ran) == ["other", "second"]


def test_an_attempt_may_schedule_the_next_one() -> None:
    attempts: list[int] = []

    async def scenario() -> None:
        pending = retries.Retries()

        async def attempt() -> None:
            attempts.append(len(attempts))
            if len(attempts) < 3:
                pending.later("k", 0.01, attempt)

        pending.later("k", 0.01, attempt)
        for _ in range(100):
            await asyncio.sleep(0.01)
            if len(attempts) == 3 and not pending.pending("k"):
                break

    asyncio.run(scenario())
    assert attempts == [0, 1, 2]
