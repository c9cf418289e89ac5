"""A watching scheduler is told each room's end once, in order, with the end published:
it need not poll every open room to find the few that ended."""

from __future__ import annotations

import threading

from embxfer import EngineConfig, KVPoll
from embxfer.local import inproc_engines
from embxfer.receiver import ReceiverEngine
from embxfer.sender import SenderEngine
from embxfer.tools.workload import payload_for

CONFIG = EngineConfig(num_blocks=64, hidden_size=32, write_threads=False)


def pumped(sender: SenderEngine, receiver: ReceiverEngine, rounds: int = 50) -> None:
    for _ in range(rounds):
        for engine in (sender, receiver):
            engine.run_once(0.0)


def test_each_end_is_told_once_with_its_status_and_result() -> None:
    sender, [receiver], _ = inproc_engines(CONFIG, CONFIG)
    sent_ended, got_ended = sender.watch_ended(), receiver.watch_ended()
    sent = [sender.create_room(room_id) for room_id in (1, 2, 3)]
    got = [receiver.create_room(room_id, sender.address) for room_id in (1, 2, 3)]
    for handle in sent[:2]:
        handle.send(payload_for(handle.room_id, 40, sender.layout, seed=1))
    got[2].abort("the request was cancelled")
    pumped(sender, receiver)

    told = got_ended.take()
    assert sorted(handle.room_id for handle in told) == [1, 2, 3]
    assert told[0].room_id == 3  # it ended first, in the first pass
    assert told[1] is got[told[1].room_id - 1]  # the very handles the scheduler holds
    by_id = {handle.room_id: handle for handle in told}
    assert by_id[3].poll() is KVPoll.Failed
    for room_id in (1, 2):
        assert by_id[room_id].poll() is KVPoll.Success
        assert by_id[room_id].result().equals(payload_for(room_id, 40, receiver.layout, seed=1))
    assert sorted(handle.room_id for handle in sent_ended.take()) == [1, 2, 3]
    assert got_ended.take() == [] and sent_ended.take() == []  # told once

    for handle in [*sent, *got]:
        handle.release()
    pumped(sender, receiver)
    assert not sender.rooms and not receiver.rooms
    assert got_ended.take() == []  # a release is no end


def test_a_room_refused_for_its_id_is_told_failed() -> None:
    sender, [_receiver], _ = inproc_engines(CONFIG, CONFIG)
    ended = sender.watch_ended()
    sender.create_room(7)
    duplicate = sender.create_room(7)
    sender.run_once(0.0)
    assert ended.take() == [duplicate]
    assert "already in use" in duplicate.reason


def test_rooms_created_before_watching_are_not_told() -> None:
    sender, [_receiver], _ = inproc_engines(CONFIG, CONFIG)
    before = sender.create_room(1)
    ended = sender.watch_ended()
    after = sender.create_room(2)
    before.abort()
    after.abort()
    sender.run_once(0.0)
    assert ended.take() == [after]


def test_take_waits_for_an_end_instead_of_polling() -> None:
    sender, [receiver], _ = inproc_engines(CONFIG, CONFIG)
    ended = receiver.watch_ended()
    got = receiver.create_room(1, sender.address)
    assert ended.take(timeout_s=0.01) == []  # nothing ended: it waited, then gave up
    aborter = threading.Timer(0.05, got.abort)
    receiver.start()
    try:
        aborter.start()
        assert ended.take(timeout_s=5.0) == [got]  # woken by the end, not by a timer
    finally:
        aborter.cancel()
        receiver.close()
        sender.close()


def test_a_room_a_running_pump_ends_at_once_is_still_told() -> None:
    """The pump may end a room (its id is taken) before ``create_room`` returns."""
    sender, [receiver], _ = inproc_engines(CONFIG, CONFIG)
    ended = sender.watch_ended()
    sender.start()
    try:
        held = sender.create_room(7)
        duplicates = [sender.create_room(7) for _ in range(20)]
        told: list[object] = []
        while len(told) < len(duplicates):
            taken = ended.take(timeout_s=5.0)
            assert taken, "a refused room was never told"
            told += taken
        assert told == duplicates and held not in told
    finally:
        sender.close()
        receiver.close()
