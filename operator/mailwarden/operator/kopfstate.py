"""What kopf keeps about each object for change handlers, which this operator does not have
(its MailServices are reconciled from events, with change detection of its own: see
handlers.mailservice and docs/decisions/0008).

kopf computes, for every event of every watched object, the object's "essence" (a deep copy
of the whole body without status) and strips its progress records from it (another deep
copy, also of the status), only to diff it for change handlers. Listener Deployments are the
largest objects the operator watches, and all of that was a fifth of its CPU at a thousand
MailServices (bench.operator_scale, profiled). These storages make both steps no-ops. Adding
a kopf change handler (on.create, on.update, on.resume, on.delete, on.field) would need kopf's
own storages back."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import kopf


class NoDiffBase(kopf.DiffBaseStorage):
    """No essence built, none stored: without change handlers nothing reads the diff."""

    def build(self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None) -> Any:
        return {}

    def fetch(self, *, body: kopf.Body) -> Any:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: Any) -> None:
        pass


class NoProgress(kopf.ProgressStorage):
    """No handler progress kept on the objects (on.event and index handlers have none)."""

    def fetch(self, *, key: Any, body: kopf.Body) -> Any:
        return None

    def store(self, *, key: Any, record: Any, body: kopf.Body, patch: kopf.Patch) -> None:
        pass

    def purge(self, *, key: Any, body: kopf.Body, patch: kopf.Patch) -> None:
        pass

    def touch(self, *, body: kopf.Body, patch: kopf.Patch, value: str | None) -> None:
        pass

    def clear(self, *, essence: Any) -> Any:
        return essence
