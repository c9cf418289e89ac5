"""The block-based buffers one side of a transfer registers: one tensor per buffer kind,
and the host-side aux record of each block."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from embxfer.buffers.blocks import check_blocks, contiguous_start
from embxfer.buffers.layout import FIELDS, KINDS, PLACES, BufferLayout, Field, Kind, Region
from embxfer.buffers.payload import EmbeddingPayload

POISON_BYTE = 0xA5
"""Canary written into blocks a room gave up, to catch writes that land there afterwards."""

Rows = slice | torch.Tensor
"""Where a room's tokens sit in a buffer flattened to (num_blocks * block_size, ...)."""


class MetadataBuffers:
    """Tensors shaped (num_blocks, block_size, ...) per kind, so block ``b`` of a kind
    starts at ``base + b * block_bytes`` as peers assume; and one aux record per block in
    host memory, which the encoder's scheduler writes with ``store`` and reads back
    (``read_aux``) but no peer ever addresses."""

    def __init__(self, layout: BufferLayout) -> None:
        self.layout = layout
        self._tensors: dict[Kind, torch.Tensor] = {
            kind: torch.zeros(
                (layout.num_blocks, layout.block_size, *layout.token_shape(kind)),
                dtype=layout.dtype(kind),
                device=layout.device,
            )
            for kind in KINDS
        }
        # Each kind as one row per token slot, and each field's columns of those rows:
        # views made once, as a room's store and views run per room.
        self._flat: dict[Kind, torch.Tensor] = {
            kind: tensor.flatten(0, 1) for kind, tensor in self._tensors.items()
        }
        self._fields: dict[Field, torch.Tensor] = {
            field: _columns(self._flat[PLACES[field].kind], PLACES[field].columns)
            for field in FIELDS
        }
        # (total tokens, mrope position delta) per block: SGLang's aux record, kept
        # as Python ints since only the scheduler reads it.
        self._aux: list[tuple[int, int]] = [(0, 0)] * layout.num_blocks

    def tensor(self, kind: Kind) -> torch.Tensor:
        """The whole buffer of ``kind``."""
        return self._tensors[kind]

    def regions(self) -> list[Region]:
        """(kind, base address, block bytes) per kind, in ``KINDS`` order: what a peer
        needs to address any block of ours."""
        return [
            Region(kind, tensor.data_ptr(), self.layout.block_bytes(kind))
            for kind, tensor in self._tensors.items()
        ]

    def memory_ranges(self) -> list[tuple[int, int]]:
        """(address, byte length) of every buffer peers write, for transport registration."""
        return [
            (tensor.data_ptr(), tensor.numel() * tensor.element_size())
            for tensor in self._tensors.values()
        ]

    def _rows(self, blocks: Sequence[int], num_tokens: int) -> Rows:
        """Where the first ``num_tokens`` tokens of ``blocks`` sit in a buffer flattened to
        (num_blocks * block_size, ...): one slice for an ascending run, else a row index."""
        size = self.layout.block_size
        used = check_blocks(
            blocks, self.layout.tokens_to_blocks(num_tokens), self.layout.num_blocks, "blocks"
        )
        start = contiguous_start(used)
        if start is not None:
            return slice(start * size, start * size + num_tokens)
        starts = torch.tensor(used, dtype=torch.int64, device=self.layout.device) * size
        slots = torch.arange(size, dtype=torch.int64, device=self.layout.device)
        return (starts.unsqueeze(1) + slots).flatten()[:num_tokens]

    def store(self, blocks: Sequence[int], payload: EmbeddingPayload) -> None:
        """Write the payload's tokens from slot 0 of ``blocks[0]`` on, and its aux record
        (total tokens, mrope position delta) for ``blocks[0]``."""
        payload.validate(self.layout)
        rows = self._rows(blocks, payload.num_tokens)
        for field, target in self._fields.items():
            source = payload.tensor(field)
            if isinstance(rows, slice):
                target[rows].copy_(source)  # copies across devices too
            else:
                target.index_copy_(0, rows, source.to(self.layout.device))
        self._aux[blocks[0]] = (payload.num_tokens, payload.mrope_position_delta)

    def view_payload(
        self,
        blocks: Sequence[int],
        num_tokens: int,
        mrope_position_delta: int = 0,
        *,
        copy: bool = False,
    ) -> EmbeddingPayload:
        """The first ``num_tokens`` tokens stored in ``blocks``, as a payload.

        Views into the buffers (valid while the blocks stay ours, and writable: what an
        encoder fills in place) when ``blocks`` is one ascending run, else gathered
        copies. ``copy=True`` always returns memory of its own, for data that must
        outlive the blocks.
        """
        rows = self._rows(blocks, num_tokens)
        if isinstance(rows, slice):
            if not copy:
                fields = self._fields
                return EmbeddingPayload(
                    fields["embeddings"][rows],
                    fields["fill_ids"][rows],
                    fields["mrope_positions"][rows],
                    mrope_position_delta,
                )
            rows_of = {kind: flat[rows].clone() for kind, flat in self._flat.items()}
        else:
            rows_of = {kind: flat.index_select(0, rows) for kind, flat in self._flat.items()}
        embeddings, fill_ids, mrope_positions = (
            _columns(rows_of[PLACES[field].kind], PLACES[field].columns) for field in FIELDS
        )
        return EmbeddingPayload(embeddings, fill_ids, mrope_positions, mrope_position_delta)

    def read_aux(self, block: int) -> tuple[int, int]:
        """(total tokens, mrope position delta) from the aux record ``store`` wrote for a
        room's first block."""
        check_blocks((block,), 1, self.layout.num_blocks, "aux block")
        return self._aux[block]

    def _block_rows(self, blocks: Sequence[int] | None) -> torch.Tensor:
        """Index of ``blocks`` (default: all), range-checked since tensors wrap negatives."""
        if blocks is None:
            blocks = range(self.layout.num_blocks)
        used = check_blocks(blocks, len(blocks), self.layout.num_blocks, "blocks")
        return torch.tensor(used, dtype=torch.int64, device=self.layout.device)

    def _bytes(self, kind: Kind) -> torch.Tensor:
        """The buffer of ``kind`` as raw bytes, shaped (num_blocks, block_bytes)."""
        return self._tensors[kind].flatten(1).view(torch.uint8)

    def poison(self, blocks: Sequence[int] | None = None) -> None:
        """Fill ``blocks`` (default: every block) of every kind with ``POISON_BYTE``."""
        index = self._block_rows(blocks)
        for kind in KINDS:
            self._bytes(kind).index_fill_(0, index, POISON_BYTE)

    def is_poisoned(self, blocks: Sequence[int]) -> bool:
        """Whether every byte of ``blocks`` in every kind still holds ``POISON_BYTE``."""
        index = self._block_rows(blocks)
        return all(
            bool((self._bytes(kind).index_select(0, index) == POISON_BYTE).all()) for kind in KINDS
        )


def _columns(rows: torch.Tensor, columns: int | slice | None) -> torch.Tensor:
    """``columns`` of each row (a view), or the rows themselves."""
    return rows if columns is None else rows[:, columns]
