"""``ZmqControlChannel.wake`` ends every wait, however many wakes came before.

With a wake pipe whose high-water mark was 1, about one wake in three after a drained
one was dropped (the sending side had not yet learnt of the drain), and the pump slept
out its whole timeout: a 50 ms stall on a send or a write completion.
"""

from __future__ import annotations

import time

from embxfer.transport.zmq_control import ZmqControlChannel

TIMEOUT_S = 2.0  # a dropped wake waits all of it; a delivered one returns at once


def test_every_wake_ends_the_wait() -> None:
    with ZmqControlChannel() as channel:
        for _ in range(200):
            channel.wake()
            started = time.monotonic()
            assert channel.receive(TIMEOUT_S) == []
            assert time.monotonic() - started < TIMEOUT_S / 2, "a wake was lost"
