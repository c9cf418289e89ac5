"""``ByteData``: the data plane of real bytes, for the Hypothesis machines."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from embxfer.buffers.assembly import assemble_room, stage_piece
from embxfer.buffers.layout import BufferLayout
from embxfer.buffers.metadata import MetadataBuffers
from embxfer.buffers.payload import EmbeddingPayload, random_payload
from embxfer.buffers.segments import plan_segments
from embxfer.fsm.actions import SpillPiece
from embxfer.fsm.messages import RoomMessage
from embxfer.fsm.receiver import ReceiverRoom
from embxfer.tools.faults import Faults
from embxfer.tools.sim.config import (
    ROOM_MESSAGES,
    SENDER,
    PendingWrite,
    RoomKey,
    SimConfig,
)
from embxfer.transport.base import WriteResult
from embxfer.transport.inproc import InprocDataTransport, InprocNetwork
from embxfer.transport.wire import WireError, decode, encode


class ByteData:
    """Real bytes: ``MetadataBuffers`` per engine, writes planned by ``plan_segments`` and
    copied by ``InprocDataTransport`` (failures injected by ``Faults``), spills staged and
    results assembled as ``ReceiverEngine`` does, freed blocks poisoned with the canary."""

    def __init__(self, config: SimConfig, seed: int) -> None:
        self.seed = seed
        self.layouts = {
            engine: BufferLayout(n, config.block_size, config.hidden_size)
            for engine, n in config.engine_blocks.items()
        }
        self.network = InprocNetwork()
        self.faults = Faults.on(self.network)
        self.buffers = {engine: MetadataBuffers(layout) for engine, layout in self.layouts.items()}
        self.transports: dict[str, InprocDataTransport] = {}
        for engine, buffers in self.buffers.items():
            transport = self.transports[engine] = InprocDataTransport(self.network, engine)
            for address, length in buffers.memory_ranges():
                transport.register(address, length)
            buffers.poison()
        self.regions = {engine: buffers.regions() for engine, buffers in self.buffers.items()}
        self.expected: dict[int, EmbeddingPayload] = {}
        self.staged: dict[RoomKey, dict[int, EmbeddingPayload]] = {}

    def payload(self, room: int, total_tokens: int) -> object:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + room)
        payload = random_payload(total_tokens, self.layouts[SENDER], generator)
        self.expected[room] = payload
        return payload

    def mrope_position_delta(self, room: int) -> int:
        return self.expected[room].mrope_position_delta

    def transmit(self, message: RoomMessage) -> RoomMessage | None:
        try:
            decoded = decode(encode(message))
        except WireError:
            return None
        assert isinstance(decoded, ROOM_MESSAGES)
        return decoded

    def store(self, room: int, blocks: Sequence[int], payload: object) -> None:
        assert isinstance(payload, EmbeddingPayload)
        self.buffers[SENDER].store(blocks, payload)

    def write(self, write: PendingWrite, ok: bool) -> WriteResult:
        piece = write.piece
        if piece.receiver not in self.layouts:
            return WriteResult(False, f"receiver {piece.receiver} is not registered")
        try:
            segments = plan_segments(
                self.regions[SENDER],
                self.regions[piece.receiver],
                self.layouts[SENDER],
                piece.src_blocks,
                piece.dst_blocks,
                piece.tokens,
                remote_num_blocks=self.layouts[piece.receiver].num_blocks,
            )
        except ValueError as exc:
            return WriteResult(False, f"cannot plan write: {exc}")
        if not ok:
            self.faults.fail_next_writes(1)
        return self.transports[SENDER].write(piece.receiver, segments)

    def spill(self, engine: str, room: int, piece: SpillPiece) -> None:
        staged = stage_piece(self.buffers[engine], piece.blocks, piece.tokens)
        self.staged.setdefault((engine, room), {})[piece.sent_tokens] = staged

    def poison(self, engine: str, blocks: Sequence[int]) -> None:
        if blocks:
            self.buffers[engine].poison(blocks)

    def canary_intact(self, engine: str, blocks: Sequence[int]) -> bool:
        return not blocks or self.buffers[engine].is_poisoned(blocks)

    def verify(self, engine: str, request: int, room: ReceiverRoom) -> str:
        """Assemble the result as the receiver engine does, and compare every byte."""
        try:
            result = assemble_room(
                self.buffers[engine],
                room.pieces,
                self.staged.get((engine, request), {}),
                room.total_tokens,
                room.mrope_position_delta,
            )
        except ValueError as exc:
            return str(exc)
        return "" if result.equals(self.expected[request]) else "bytes differ from the payload"

    def kill(self, engine: str) -> None:
        self.transports[engine].close()
