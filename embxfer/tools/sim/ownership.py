"""The reference model of memory, which trusts no room's account: which room owns each
allocated block of each engine (from the allocator calls each room makes), and in which
order rooms began to wait for blocks (no room may get blocks while one that began to
wait before it still waits)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

from embxfer.buffers.allocator import FreeListAllocator
from embxfer.tools.sim.config import HOG, Violation
from embxfer.tools.sim.data import DataPlane

OwnershipSnapshot = tuple[dict[str, dict[int, int]], dict[str, list[int]]]


class Ownership:
    """Owners and waiting order per engine; ``TrackedAllocator`` reports every alloc and
    free, attributed to the room whose event runs (``acting_for``). Allocations check
    the canary of the blocks handed out, through the world's data plane."""

    def __init__(self, engines: Iterable[str], data: DataPlane) -> None:
        engines = tuple(engines)
        self.data = data
        self.owners: dict[str, dict[int, int]] = {engine: {} for engine in engines}
        self.queued: dict[str, list[int]] = {engine: [] for engine in engines}
        self._owner: int | None = None  # the room allocating right now
        self._freed: list[tuple[str, list[int]]] = []  # to poison once actions ran

    @contextmanager
    def acting_for(self, owner: int) -> Iterator[None]:
        """Attribute the allocations and frees of the body to room ``owner``."""
        self._owner = owner
        try:
            yield
        finally:
            self._owner = None

    def allocated(self, engine: str, blocks: Sequence[int]) -> None:
        owner = self._owner
        if owner is None:
            raise Violation(f"{engine} allocated {blocks} outside any room's event")
        queued = self.queued[engine]
        if owner != HOG and queued:
            if queued[0] != owner:
                raise Violation(
                    f"room {owner} got {engine} blocks {list(blocks)} while room "
                    f"{queued[0]} waited ahead of it"
                )
            del queued[0]
        owners = self.owners[engine]
        just_freed = {b for e, freed in self._freed if e == engine for b in freed}
        for block in blocks:
            if block in owners:
                raise Violation(f"{engine} handed out block {block}, owned by room {owners[block]}")
            owners[block] = owner
        fresh = [block for block in blocks if block not in just_freed]
        if not self.data.canary_intact(engine, fresh):
            raise Violation(f"canary of {engine} blocks {fresh} overwritten while they were free")

    def freeing(self, engine: str, blocks: Sequence[int]) -> None:
        owners = self.owners[engine]
        for block in blocks:
            if owners.get(block) != self._owner:
                raise Violation(
                    f"room {self._owner} freed {engine} block {block}, owned by "
                    f"{owners.get(block, 'nobody')}"
                )
            del owners[block]
        self._freed.append((engine, list(blocks)))

    def poison_freed(self) -> None:
        """Poison what was freed, once the actions ran: a ``SpillPiece`` copies blocks the
        room freed while handling the event, before any write can reach them."""
        for engine, blocks in self._freed:
            owners = self.owners[engine]
            self.data.poison(engine, [block for block in blocks if block not in owners])
        self._freed.clear()

    def snapshot(self) -> OwnershipSnapshot:
        return {e: dict(o) for e, o in self.owners.items()}, {
            e: list(q) for e, q in self.queued.items()
        }

    def restore(self, snapshot: OwnershipSnapshot) -> None:
        owners, queued = snapshot
        self.owners = {e: dict(o) for e, o in owners.items()}
        self.queued = {e: list(q) for e, q in queued.items()}


class TrackedAllocator:
    """The real ``FreeListAllocator`` (LIFO: freed blocks come straight back, so every
    resume can reuse them), with each alloc and free reported to the reference model."""

    def __init__(self, ownership: Ownership, engine: str, inner: FreeListAllocator) -> None:
        self.ownership = ownership
        self.engine = engine
        self.inner = inner

    @property
    def block_size(self) -> int:
        return self.inner.block_size

    @property
    def total_blocks(self) -> int:
        return self.inner.total_blocks

    @property
    def free_blocks(self) -> int:
        return self.inner.free_blocks

    def alloc(self, num_tokens: int) -> list[int] | None:
        blocks = self.inner.alloc(num_tokens)
        if blocks is not None:
            self.ownership.allocated(self.engine, blocks)
        return blocks

    def free(self, blocks: Sequence[int]) -> None:
        self.ownership.freeing(self.engine, blocks)
        self.inner.free(blocks)
