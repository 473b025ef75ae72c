"""A session check (registered in tests/conftest.py): every CEL rule of the CRDs is evaluated
by tests/crds/test_cel.py. It is judged when the session ends, and only when every test of
that module was selected and passed: a run with -k, or one stopped early, says nothing about
coverage and is not failed for it."""

from __future__ import annotations

import pytest

MODULE = "tests/crds/test_cel.py"
# Every rule crdcheck.validate() evaluated (tests pass this list as its `seen`).
EVALUATED: list[str] = []

_collected: set[str] = set()
_selected: set[str] = set()
_passed: set[str] = set()
_missing: list[str] = []


def _ours(nodeid: str) -> bool:
    return nodeid.split("::", 1)[0] == MODULE


def pytest_itemcollected(item: pytest.Item) -> None:
    if _ours(item.nodeid):
        _collected.add(item.nodeid)


def pytest_collection_finish(session: pytest.Session) -> None:
    _selected.update(i.nodeid for i in session.items if _ours(i.nodeid))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and report.passed and _ours(report.nodeid):
        _passed.add(report.nodeid)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    if not _collected or _selected != _collected or _passed != _collected:
        return
    from kubeemu import crdcheck
    from mailwarden.operator import crd

    rules = {
        r.rule
        for c in (crd.mailservice_crd(), crd.ipaddressgroup_crd())
        for r in crdcheck.rules(crdcheck.openapi_schema(c))
    }
    _missing.extend(sorted(rules - set(EVALUATED)))
    if _missing:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _missing:
        terminalreporter.section("CEL rules no test evaluated", red=True)
        for rule in _missing:
            terminalreporter.line(f"{MODULE} never evaluates: {rule}")
