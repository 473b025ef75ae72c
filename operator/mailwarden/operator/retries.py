"""Retries of failed reconciliations, one pending per object: a failure schedules the next
attempt after a backoff; any newer attempt (the object's next event, a fan-out) replaces it.
The work queue of a controller-runtime controller, in the few lines this operator needs
(kopf retries only its change handlers, which keep their progress in annotations on the
object: a write per handled change that this operator does not make)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable

MAX_BACKOFF = 300.0


def backoff(attempt: int) -> float:
    """Seconds before retry `attempt` (0, 1, ...): 1, 2, 4, ... up to five minutes."""
    return min(MAX_BACKOFF, 2.0 ** min(attempt, 10))


class Retries:
    def __init__(self) -> None:
        self._pending: dict[Hashable, asyncio.Task[None]] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def pending(self, key: Hashable) -> bool:
        return key in self._pending

    def later(self, key: Hashable, delay: float, attempt: Callable[[], Awaitable[None]]) -> None:
        """Run `attempt` after `delay` seconds, instead of whatever was pending for `key`."""
        self.cancel(key)

        async def run() -> None:
            await asyncio.sleep(delay)
            # No longer pending once it runs: the attempt may schedule the next one.
            if self._pending.get(key) is task:
                del self._pending[key]
            await attempt()

        task = asyncio.create_task(run(), name=f"retry {key}")
        self._pending[key] = task

    def cancel(self, key: Hashable) -> None:
        task = self._pending.pop(key, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def close(self) -> None:
        tasks = list(self._pending.values())
        self._pending.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
