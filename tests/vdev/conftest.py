"""Fixtures for the device-model tests."""

from __future__ import annotations

import pytest

from tests.helpers.fakes import Cfg, FakeDma, FakeIrqSink
from vdev.endpoint.function import TeeIoEndpoint


@pytest.fixture
def endpoint() -> TeeIoEndpoint:
    return TeeIoEndpoint()


@pytest.fixture
def cfg(endpoint: TeeIoEndpoint) -> Cfg:
    return Cfg(endpoint)


@pytest.fixture
def irq(endpoint: TeeIoEndpoint) -> FakeIrqSink:
    sink = FakeIrqSink()
    endpoint.attach(sink, FakeDma())
    return sink
