"""Data planes: what the world does with payload bytes. The world decides when a payload
is stored, written, spilled or checked; a data plane decides how: ``LabelData`` with
symbolic labels (cheap to copy and hash, for the explorer), ``ByteData`` with real bytes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, TypeAlias

from embxfer.fsm.actions import SpillPiece
from embxfer.fsm.memory import blocks_needed
from embxfer.fsm.messages import RoomMessage
from embxfer.fsm.receiver import ReceiverRoom
from embxfer.tools.faults import INJECTED_WRITE_FAILURE
from embxfer.tools.sim.config import SENDER, PendingWrite, RoomKey, SimConfig
from embxfer.transport.base import WriteResult


class DataPlane(Protocol):
    """What the world does with payload bytes; the world decides when, this decides how."""

    def payload(self, room: int, total_tokens: int) -> object:
        """The payload of a new room, as the sender engine keeps it."""
        ...

    def mrope_position_delta(self, room: int) -> int:
        """The M-RoPE delta of ``room``'s payload, which ``PayloadReady`` carries."""
        ...

    def transmit(self, message: RoomMessage) -> RoomMessage | None:
        """The message as the receiving engine decodes it (None: its wire rejects it)."""
        ...

    def store(self, room: int, blocks: Sequence[int], payload: object) -> None: ...

    def write(self, write: PendingWrite, ok: bool) -> WriteResult:
        """Carry out a write (``ok`` False: the transport fails it, target untouched)."""
        ...

    def spill(self, engine: str, room: int, piece: SpillPiece) -> None: ...

    def poison(self, engine: str, blocks: Sequence[int]) -> None:
        """Fill freed blocks with the canary."""
        ...

    def canary_intact(self, engine: str, blocks: Sequence[int]) -> bool:
        """Whether free blocks still hold the canary: nothing wrote them while free."""
        ...

    def verify(self, engine: str, request: int, room: ReceiverRoom) -> str:
        """Why request ``request``'s Success ``room`` holds other than what was sent for
        it ("" if it does not)."""
        ...

    def kill(self, engine: str) -> None: ...


Label: TypeAlias = tuple[int, int] | None
"""Symbolic content of a block: (room, offset of its first token); None is the canary."""
Staged: TypeAlias = tuple[Label, ...]


class LabelData:
    """Blocks hold labels instead of bytes: cheap to copy and hash, for the explorer.

    A block's label says which room's tokens it holds from which offset, so a Success
    result can be checked token range by token range without any tensor; the room's
    length and M-RoPE delta (minus the room id) are checked as the receiver room kept
    them from the sender's messages.
    """

    def __init__(self, config: SimConfig) -> None:
        self.block_size = config.block_size
        sizes = config.engine_blocks
        self.labels: dict[str, list[Label]] = {e: [None] * n for e, n in sizes.items()}
        self.staged: dict[RoomKey, dict[int, Staged]] = {}
        self.totals: dict[int, int] = {}
        self.dead: set[str] = set()

    def payload(self, room: int, total_tokens: int) -> object:
        self.totals[room] = total_tokens
        return None

    def mrope_position_delta(self, room: int) -> int:
        return -room

    def transmit(self, message: RoomMessage) -> RoomMessage | None:
        return message

    def store(self, room: int, blocks: Sequence[int], payload: object) -> None:
        labels = self.labels[SENDER]
        for index, block in enumerate(blocks):
            labels[block] = (room, index * self.block_size)

    def write(self, write: PendingWrite, ok: bool) -> WriteResult:
        piece = write.piece
        if not ok:
            return WriteResult(False, INJECTED_WRITE_FAILURE)
        target = self.labels.get(piece.receiver)
        if target is None or piece.receiver in self.dead:
            return WriteResult(False, f"unknown peer session {piece.receiver!r}")
        nblocks = blocks_needed(piece.tokens, self.block_size)
        src, dst = piece.src_blocks[:nblocks], piece.dst_blocks[:nblocks]
        if len(dst) < nblocks or not all(0 <= block < len(target) for block in dst):
            return WriteResult(False, f"cannot plan write into blocks {piece.dst_blocks}")
        source = self.labels[SENDER]
        for src_block, dst_block in zip(src, dst, strict=True):
            target[dst_block] = source[src_block]
        return WriteResult(True)

    def spill(self, engine: str, room: int, piece: SpillPiece) -> None:
        labels = tuple(self.labels[engine][block] for block in piece.blocks)
        self.staged.setdefault((engine, room), {})[piece.sent_tokens] = labels

    def poison(self, engine: str, blocks: Sequence[int]) -> None:
        for block in blocks:
            self.labels[engine][block] = None

    def canary_intact(self, engine: str, blocks: Sequence[int]) -> bool:
        labels = self.labels[engine]
        return all(labels[block] is None for block in blocks)

    def verify(self, engine: str, request: int, room: ReceiverRoom) -> str:
        staged = self.staged.get((engine, request), {})
        total = self.totals[request]
        if (room.total_tokens, room.mrope_position_delta) != (total, -request):
            return f"aux record is {room.total_tokens, room.mrope_position_delta}"
        covered = 0
        for piece in sorted(room.pieces, key=lambda p: p.sent_tokens):
            nblocks = blocks_needed(piece.tokens, self.block_size)
            if piece.blocks:
                labels = tuple(self.labels[engine][b] for b in piece.blocks[:nblocks])
            else:
                labels = staged[piece.sent_tokens]
            expected = tuple(
                (request, piece.sent_tokens + i * self.block_size) for i in range(nblocks)
            )
            if piece.sent_tokens != covered or labels != expected:
                return f"piece at {piece.sent_tokens} holds {labels}, expected {expected}"
            covered += piece.tokens
        if covered != total:
            return f"pieces cover {covered} of {total} tokens"
        return ""

    def kill(self, engine: str) -> None:
        self.dead.add(engine)

    def snapshot(self) -> tuple[Any, ...]:
        return (
            {e: list(v) for e, v in self.labels.items()},
            {k: dict(v) for k, v in self.staged.items()},
            set(self.dead),
        )

    def restore(self, snapshot: tuple[Any, ...]) -> None:
        labels, staged, dead = snapshot
        self.labels = {e: list(v) for e, v in labels.items()}
        self.staged = {k: dict(v) for k, v in staged.items()}
        self.dead = set(dead)

    def key(self) -> tuple[Any, ...]:
        return (
            tuple(tuple(v) for v in self.labels.values()),
            tuple(sorted((k, tuple(sorted(v.items()))) for k, v in self.staged.items())),
        )
