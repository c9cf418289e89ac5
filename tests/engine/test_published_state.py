"""What a scheduler thread sees: a room's state once the event that set it is handled.

A transition changes ``state`` before its callbacks run, and a receiver's last piece is
recorded in the callback of the transition to Success; a scheduler polling from its own
thread in between saw Success, asked for the result and found it a piece short (found by
the cross-process demo). Handles read what the pump publishes once an event is fully
handled, with the result assembled."""

from __future__ import annotations

import pytest

from embxfer import EngineConfig, KVPoll
from embxfer.fsm.events import PieceArrived
from embxfer.fsm.receiver import ReceiverRoom
from embxfer.handles import ReceiverHandle
from embxfer.local import inproc_engines
from embxfer.tools.workload import payload_for

CONFIG = EngineConfig(num_blocks=64, hidden_size=32, write_threads=False)


def test_success_is_seen_only_once_the_last_piece_is_in(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, KVPoll, int]] = []
    handles: list[ReceiverHandle] = []
    take_piece = ReceiverRoom._take_piece

    def watched(room: ReceiverRoom, event: PieceArrived) -> None:
        seen.append((room.state, handles[0].poll(), len(room.pieces)))  # as others see it
        take_piece(room, event)

    monkeypatch.setattr(ReceiverRoom, "_take_piece", watched)
    sender, [receiver], _ = inproc_engines(CONFIG, CONFIG)
    sent = sender.create_room(1)
    got = receiver.create_room(1, sender.address, expected_tokens=256)
    handles.append(got)
    sent.send(payload_for(1, 300, sender.layout, seed=5))
    for _ in range(1000):
        if got.poll() is KVPoll.Success:
            break
        for engine in (sender, receiver):
            engine.run_once(0.0)
    assert got.poll() is KVPoll.Success
    state, polled, pieces = seen[-1]  # in the callback of the transition to Success
    assert state == KVPoll.Success.name
    assert polled is KVPoll.Transferring
    assert pieces == 1
    assert got.result().equals(payload_for(1, 300, receiver.layout, seed=5))
