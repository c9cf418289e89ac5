"""A receiver that gives up on a room the sender has already finished and forgotten
(its notice of the last piece was lost, in a partition say) gets its abort answered at
once: the receiver then frees the blocks it held against a late write, instead of
holding them for the whole write grace (a minute by default)."""

from __future__ import annotations

from embxfer import EngineConfig, KVPoll
from embxfer.transport.messages import PieceWritten
from embxfer.workload import payload_for
from tests.integration.pumping import Rig

CONFIG = EngineConfig(num_blocks=64, hidden_size=16, default_alloc_tokens=1024)


def test_a_late_abort_of_a_forgotten_room_is_acknowledged_and_frees_the_quarantine() -> None:
    rig = Rig(CONFIG)
    sent = rig.sender.create_room(1)
    got = rig.receiver.create_room(1, rig.sender.address)
    rig.network.faults.drop_next(1, PieceWritten)  # the receiver never learns it is done
    sent.send(payload_for(1, 500, rig.sender.layout, seed=3))
    rig.pump_until(lambda: sent.poll() is KVPoll.Success)
    sent.release()
    rig.pump_until(lambda: not rig.sender.rooms)  # finished and forgotten
    assert got.poll() is KVPoll.WaitingForInput

    got.abort("the client went away")
    got.release()
    rig.pump_until(lambda: got.poll() is KVPoll.Failed)
    rig.pump_until(lambda: not rig.receiver.rooms)  # in a few round trips, not the grace
    assert rig.now < CONFIG.timeouts.write_grace_s
    assert rig.receiver.allocator.used_blocks == 0
    assert dict(rig.sender.stats.rejected) == {}
    rig.close()
