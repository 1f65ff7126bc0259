"""Each fake exposes the same port as the real adapter (as pgqueuer's test_port_conformance does):
same methods, same parameters, both coroutines. A port that grows a method fails here until the
fake and the adapter both have it."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from tests.support.fakes import FakePublisher, FakeStore
from worker.application.coalescing import CoalescingStore
from worker.application.ports import CaptureStore, Publisher
from worker.infrastructure.repository import ArtifactRepository
from worker.infrastructure.result_publisher import OutcomePublisher


def port_methods(port: type) -> list[str]:
    return [
        name
        for name, member in vars(port).items()
        if inspect.isfunction(member) and not name.startswith("_")
    ]


def parameters(method: Any) -> list[tuple[str, Any]]:
    return [(p.name, p.kind) for p in inspect.signature(method).parameters.values()]


@pytest.mark.parametrize(
    ("port", "implementations"),
    [
        (CaptureStore, [FakeStore, ArtifactRepository, CoalescingStore]),
        (Publisher, [FakePublisher, OutcomePublisher]),
    ],
    ids=["CaptureStore", "Publisher"],
)
def test_fake_and_adapter_expose_the_same_port(port: type, implementations: list[type]) -> None:
    methods = port_methods(port)
    assert methods, f"{port.__name__} declares no methods"
    for name in methods:
        expected = parameters(getattr(port, name))
        for implementation in implementations:
            method = getattr(implementation, name, None)
            assert method is not None, f"{implementation.__name__} lacks {name}"
            assert inspect.iscoroutinefunction(method), f"{implementation.__name__}.{name}"
            assert parameters(method) == expected, f"{implementation.__name__}.{name}"
