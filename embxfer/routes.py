"""What inbound control messages mean to each role, beyond the room they are for.

Room messages become room events through ``fsm.routing.room_event`` (the one mapping),
and ``fsm.routing.incarnation`` picks, of the rooms under the message's id, the one it
is for. What is left is engine business, per role. A sender keeps the receivers that
registered (their buffer geometry, for one-sided writes), takes room messages from
them alone, and parks those for rooms its scheduler has not created yet. A receiver
registers with each sender its rooms name, once, and holds rooms in Bootstrapping
until the sender accepts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec

from embxfer.fsm.events import AbortReceived, Event, PeerReady, RequestReceived
from embxfer.fsm.messages import (
    AbortAck,
    BufferRegion,
    Message,
    Register,
    RegisterAck,
)
from embxfer.fsm.room import Room
from embxfer.fsm.routing import Role, incarnation, room_event

if TYPE_CHECKING:
    from embxfer.receiver import ReceiverEngine, ReceiverTracked
    from embxfer.sender import SenderEngine, SenderTracked

LOG = logging.getLogger("embxfer.routes")

PARKED_LIMIT = 65536  # room events held for rooms the scheduler has not created yet


@dataclass(frozen=True, slots=True)
class Parked:
    """A room event held for a room the scheduler has not created yet."""

    at: float
    peer: str
    nonce: int  # the receiver incarnation it is from
    event: Event


@dataclass(frozen=True)
class RemoteBuffers:
    """A registered receiver: where its blocks are, for one-sided writes."""

    session_id: str
    regions: tuple[BufferRegion, ...]
    num_blocks: int


class SenderRoutes:
    """The sender's side of the control channel."""

    def __init__(self, engine: SenderEngine) -> None:
        self.engine = engine
        self.receivers: dict[str, RemoteBuffers] = {}
        self._parked: dict[int, list[Parked]] = {}
        self._parked_count = 0

    def on_message(self, peer: str, message: Message) -> None:
        """A room message goes to the room under its id that bound its incarnation, else
        to the room the scheduler holds under it (which binds it or finds it stale),
        unless a room that is gone had that incarnation (then it is late) or the held
        room knows its receiver by another incarnation (then it is a later room's).
        Messages for a room not created yet wait for it (parked)."""
        engine = self.engine
        if isinstance(message, Register):
            self._register(peer, message)
            return
        routed = _room_event(engine, "sender", peer, message)
        if routed is None:
            return
        room_id, nonce, event = routed
        held = engine.rooms.under(room_id)
        retired = engine.rooms.retired(room_id, (peer, nonce))
        tracked = incarnation(held, _room, peer, nonce, retired)
        over = tracked is None and (retired or bool(held) or engine.rooms.is_closed(room_id))
        aborting = isinstance(event, AbortReceived)
        if over and aborting:
            # A receiver gave up on a room this engine finished (its last notice was lost,
            # in a partition say, after which this engine may have given the receiver up
            # too), or on one no room here ever knew. Nothing of that incarnation is in
            # flight (a room is forgotten only once none of its writes is): say so, as
            # the room would have, and the receiver frees the blocks it holds against a
            # late write. That fails nothing, whoever asks.
            engine.control.send(peer, AbortAck(room_id, nonce))
        # Only a registered receiver can be in a room, so only one may ask or abort: a
        # stray peer guessing room ids must not fail other receivers' rooms.
        if peer not in self.receivers:
            engine.reject("unregistered_peer", peer)
        elif tracked is not None:
            engine.deliver(tracked, event)
        elif retired:
            if not aborting:
                engine.reject("closed_room", peer, room=room_id)
        elif over and aborting:
            # No room here knows this incarnation: an old request's, or the next one's
            # (the id is reused) aborting before its room exists. It fails nothing;
            # whatever of it waits here is dropped.
            self._drop_parked(room_id, peer, nonce)
        else:
            # No room knows the id, or none held knows this incarnation: it may be the
            # next room's (the scheduler reuses the id, and receivers may be faster than
            # the encoder's scheduler).
            self._park(Parked(engine.clock(), peer, nonce, event), room_id)

    def unpark(self, tracked: SenderTracked) -> list[Event]:
        """The events held for a room its scheduler just created, in arrival order: of
        each receiver, its newest incarnation's (a receiver engine ends one room under
        an id before it creates the next, and speaks on one ordered channel, so an
        earlier incarnation's messages are late). The others are dropped."""
        room_id = tracked.room_id
        parked = self._parked.pop(room_id, [])
        self._parked_count -= len(parked)
        newest = {entry.peer: entry.nonce for entry in parked}
        for entry in parked:
            if newest[entry.peer] != entry.nonce:
                self.engine.reject("closed_room", entry.peer, room=room_id)
        return [_arrived(entry) for entry in parked if newest[entry.peer] == entry.nonce]

    def _park(self, entry: Parked, room_id: int) -> None:
        """Hold a room's event for a room the scheduler has not created yet (it may be
        slower than the receiver); dropped after the bootstrap timeout."""
        if self._parked_count >= PARKED_LIMIT:
            self.engine.reject("park_full", entry.peer, room=room_id)
            return
        self._parked.setdefault(room_id, []).append(entry)
        self._parked_count += 1

    def _drop_parked(self, room_id: int, peer: str, nonce: int) -> None:
        """Drop what waits for a room from incarnation ``(peer, nonce)``: it is over."""
        parked = self._parked.get(room_id, [])
        kept = [e for e in parked if (e.peer, e.nonce) != (peer, nonce)]
        for _ in range(len(parked) - len(kept)):
            self.engine.reject("closed_room", peer, room=room_id)
        self._parked_count -= len(parked) - len(kept)
        if kept:
            self._parked[room_id] = kept
        else:
            self._parked.pop(room_id, None)

    def _register(self, peer: str, message: Register) -> None:
        problem = self._geometry_problem(message)
        if problem:
            self.engine.reject("bad_geometry", peer, problem)
            self.engine.control.send(peer, RegisterAck(False, problem))
            return
        self.receivers[peer] = RemoteBuffers(
            message.session_id, message.regions, message.num_blocks
        )
        self.engine.control.send(peer, RegisterAck(True))

    def _geometry_problem(self, message: Register) -> str:
        layout = self.engine.layout
        if message.block_size != layout.block_size:
            return f"block_size {message.block_size} != {layout.block_size}"
        theirs = {(r.kind, r.block_bytes) for r in message.regions}
        ours = {(r.kind, r.block_bytes) for r in self.engine.local_regions}
        if theirs != ours:
            return f"buffer kinds/sizes {sorted(theirs)} != {sorted(ours)}"
        return ""

    def needed_peers(self) -> Iterable[str]:
        """Receivers that get heartbeats; those silent past the peer timeout are lost.

        A receiver still owed a piece of an open room must be alive; one that has all
        its tokens may go quiet (it has nothing left to ask) while the room waits on
        the other receivers, so its silence must not fail the room. Registered
        receivers heard from within the peer timeout get heartbeats as well (and are
        never lost for it): one may be waiting on a room this engine has not created
        yet, and must keep hearing from us meanwhile.
        """
        owed = {
            peer
            for tracked in self.engine.rooms
            if not tracked.room.terminal
            for peer in tracked.room.owed_receivers()
        }
        since = self.engine.clock() - self.engine.config.peer_timeout_s
        recent = {peer for peer in self.receivers if self.engine.peers.heard_since(peer, since)}
        return owed | recent

    def peer_lost(self, peer: str) -> None:
        self.receivers.pop(peer, None)

    def housekeeping(self, now: float) -> None:
        """Drop parked events older than the bootstrap timeout."""
        expiry = now - self.engine.config.timeouts.bootstrap_s
        for room_id in list(self._parked):
            kept = [entry for entry in self._parked[room_id] if entry.at > expiry]
            self._parked_count -= len(self._parked[room_id]) - len(kept)
            if kept:
                self._parked[room_id] = kept
            else:
                del self._parked[room_id]


@dataclass
class SenderLink:
    """Registration with one sender: rooms wait in Bootstrapping until it is accepted."""

    ready: bool = False
    next_register: float = 0.0


class ReceiverRoutes:
    """The receiver's side of the control channel."""

    def __init__(self, engine: ReceiverEngine, register: Register) -> None:
        self.engine = engine
        self.senders: dict[str, SenderLink] = {}
        self._register = register

    def joined(self, tracked: ReceiverTracked) -> None:
        """A room was just adopted: register with its sender once, or let it start."""
        sender = tracked.room.sender
        link = self.senders.get(sender)
        if link is None:  # one registration per sender; housekeeping repeats it if lost
            link = self.senders[sender] = SenderLink()
            self._send_register(sender, link)
        elif link.ready:
            self.engine.deliver(tracked, PeerReady())

    def _send_register(self, sender: str, link: SenderLink) -> None:
        link.next_register = self.engine.clock() + self.engine.config.heartbeat_s
        self.engine.control.send(sender, self._register)

    def on_message(self, peer: str, message: Message) -> None:
        engine = self.engine
        if isinstance(message, RegisterAck):
            self._registered(peer, message)
            return
        routed = _room_event(engine, "receiver", peer, message)
        if routed is None:
            return
        room_id, nonce, event = routed
        held = engine.rooms.under(room_id)
        tracked = incarnation(held, _room, peer, nonce)
        if tracked is None:
            over = held or engine.rooms.is_closed(room_id)
            engine.reject("closed_room" if over else "unknown_room", peer, room=room_id)
            return
        engine.deliver(tracked, event)

    def _registered(self, peer: str, message: RegisterAck) -> None:
        link = self.senders.get(peer)
        if link is None or link.ready:
            self.engine.reject("unexpected_register_ack", peer)
            return
        waiting = [tracked for tracked in self.engine.rooms if tracked.room.sender == peer]
        if message.accepted:
            link.ready = True
            for tracked in waiting:
                self.engine.deliver(tracked, PeerReady())
        else:
            del self.senders[peer]
            refused = f"registration refused: {message.reason}"
            for tracked in waiting:
                self.engine.deliver(tracked, AbortReceived(peer, refused, tracked.room.nonce))

    def needed_peers(self) -> Iterable[str]:
        """Senders of open rooms, and every sender this engine is registered with.

        A registration is watched like a room: both sides heartbeat it (the sender
        heartbeats receivers it hears from), so a sender silent past the peer timeout
        is lost, and the registration with it. Without that, a receiver idle through a
        partition would keep a registration the sender gave up, and its next rooms would
        ask as a stranger and be turned down until they timed out.
        """
        open_rooms = {t.room.sender for t in self.engine.rooms if not t.room.terminal}
        return open_rooms | self.senders.keys()

    def peer_lost(self, peer: str) -> None:
        self.senders.pop(peer, None)

    def housekeeping(self, now: float) -> None:
        """Register again with senders that have not answered."""
        for sender, link in self.senders.items():
            if not link.ready and now >= link.next_register:
                self._send_register(sender, link)


def _room_event(
    engine: SenderEngine | ReceiverEngine, role: Role, peer: str, message: Message
) -> tuple[int, int, Event] | None:
    """``room_event`` for ``role``, rejecting (counted, logged once) a message no room
    of the role takes: both routers answer a kind they never expect alike."""
    routed = room_event(role, peer, message)
    if routed is None:
        engine.reject("unexpected_kind", peer, type(message).__name__)
    return routed


def _room(tracked: SenderTracked | ReceiverTracked) -> Room:
    return tracked.room


def _arrived(entry: Parked) -> Event:
    """A parked request keeps its age: a sender serves no request older than
    ``progress_s`` (counted from its arrival), so no write outlives the receiver's
    quarantine, however long the request waited for its room."""
    event = entry.event
    if isinstance(event, RequestReceived):
        return msgspec.structs.replace(event, arrived_at=entry.at)
    return event
