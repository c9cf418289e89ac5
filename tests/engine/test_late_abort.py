"""A receiver that gives up on a room the sender has already finished and forgotten
(its notice of the last piece was lost, in a partition say) gets its abort answered at
once, even if the sender has given that receiver up meanwhile: the receiver then frees
the blocks it held against a late write, instead of holding them for the whole write
grace (a minute by default)."""

from __future__ import annotations

from embxfer import EngineConfig, KVPoll, Timeouts
from embxfer.fsm.messages import PieceWritten
from embxfer.tools.faults import FaultPlan, Faults
from embxfer.tools.workload import payload_for
from tests.integration.pumping import Rig

CONFIG = EngineConfig(num_blocks=64, hidden_size=16, default_alloc_tokens=1024)


def test_a_late_abort_of_a_forgotten_room_is_acknowledged_and_frees_the_quarantine() -> None:
    rig = Rig(CONFIG)
    faults = Faults.on(rig.network)
    sent = rig.sender.create_room(1)
    got = rig.receiver.create_room(1, rig.sender.address)
    faults.drop_next(1, PieceWritten)  # the receiver never learns it is done
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


def test_so_is_one_that_arrives_after_a_partition_in_which_the_sender_gave_it_up() -> None:
    config = CONFIG.replace(heartbeat_s=0.1, peer_timeout_s=1.0, timeouts=Timeouts())
    rig = Rig(config)
    faults = Faults.on(rig.network)
    done = rig.sender.create_room(1)  # it will finish, and be forgotten, before the cut
    unaware = rig.receiver.create_room(1, rig.sender.address)
    faults.drop_next(1, PieceWritten)
    done.send(payload_for(1, 500, rig.sender.layout, seed=3))
    rig.pump_until(lambda: done.poll() is KVPoll.Success)
    done.release()
    owed = rig.sender.create_room(2)  # the receiver joins; the payload never comes
    joined = rig.receiver.create_room(2, rig.sender.address, expected_tokens=300)
    rig.pump_until(lambda: owed.poll() is KVPoll.WaitingForInput and not rig.sender.rooms.get(1))

    # The cut: every message is held (as TCP holds them) until the heal.
    faults.plan = FaultPlan(delay=1.0, delay_sends=10**9)
    rig.pump_until(lambda: owed.poll() is KVPoll.Failed and joined.poll() is KVPoll.Failed)
    rig.pump_until(lambda: unaware.poll() is KVPoll.Failed)
    assert rig.receiver.address not in rig.sender.routes.receivers  # given up
    for handle in (owed, unaware, joined):
        handle.release()
    faults.plan = None
    faults.release_held()

    rig.pump_until(lambda: not rig.receiver.rooms)  # in a few round trips, not the grace
    assert rig.now < config.timeouts.write_grace_s
    assert rig.receiver.allocator.used_blocks == 0
    rig.close()
