"""pytest fixtures for the tests of code that enqueues, loaded by the package's ``pytest11`` entry point
(``wft_testing``): installing the package makes them available to every test, with no import.

    def test_signup_starts_onboarding(message_queue_double: InMemoryMessageQueue) -> None:
        SignupService().sign_up("ada@example.com")      # calls get_message_queue().enqueue(...)
        [sent] = message_queue_double.sent
        assert sent.payload["workflow_id"] == "customer-onboarding"

Disable the plugin with ``-p no:wft_testing``. Nothing of the project is imported until a fixture is used,
so a test session's own setup (its settings, its servers) comes first.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from fabric.testing import InMemoryMessageQueue


@pytest.fixture
def message_queue_double() -> Iterator[InMemoryMessageQueue]:
    """A fresh :class:`~fabric.testing.InMemoryMessageQueue`, installed as this process's
    ``get_message_queue()`` for the test (so services that call it record into the double), and removed
    after it: the next ``get_message_queue()`` builds the real queue again. Recording needs no server;
    ``message_queue_double.run()`` needs Redis (see :meth:`~fabric.testing.InMemoryMessageQueue.run`)."""
    from fabric.testing import InMemoryMessageQueue, installed

    double = InMemoryMessageQueue()
    try:
        with installed(double):
            yield double
    finally:
        double.close()
