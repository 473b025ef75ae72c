from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from kubeemu.emulator import EmulatorThread
from tests.support.operator import Client, OperatorThread

_namespaces = itertools.count(1)


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorThread]:
    et = EmulatorThread().start()
    yield et
    et.stop()


@pytest.fixture(scope="module")
def operator(emulator: EmulatorThread) -> Iterator[OperatorThread]:
    op = OperatorThread(emulator.url).start()
    yield op
    op.stop()


@pytest.fixture
def kube(emulator: EmulatorThread, operator: OperatorThread) -> Iterator[Client]:
    client = Client(emulator.url)
    yield client
    client.close()


@pytest.fixture
def ns() -> str:
    """A namespace of its own for each test (the emulator needs no Namespace object)."""
    return f"t{next(_namespaces)}"
