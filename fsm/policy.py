"""Receiver memory policy: how much to allocate up front, and what to do on a resume."""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass


class SpillMode(enum.Enum):
    """What a receiver does with pieces it already holds when it needs blocks for more."""

    KEEP_THEN_SPILL = "keep_then_spill"  # keep pieces in place; spill only if memory is short
    ALWAYS_SPILL = "always_spill"  # copy every piece out before resuming (the seed design)
    NEVER_SPILL = "never_spill"  # keep pieces; wait for memory (back-pressure) if short


@dataclass(frozen=True, slots=True)
class ResumePolicy:
    """How a receiver allocates for a resume.

    ``max_resume_tokens`` caps one resume's allocation (None: the whole rest), so very
    long embeddings arrive in several bounded pieces. ``allow_partial``: when the
    allocation does not fit, take what is free and resume again later rather than wait
    for all of it, as long as that is at least ``min_piece_tokens`` (or the whole pool,
    if that is smaller): each piece is then real progress, and any piece fits.
    """

    spill: SpillMode = SpillMode.KEEP_THEN_SPILL
    max_resume_tokens: int | None = None
    allow_partial: bool = True
    min_piece_tokens: int = 1024

    def floor_tokens(self, wanted: int, pool_tokens: int) -> int:
        """The fewest tokens a piece of ``wanted`` may be granted with in a pool of
        ``pool_tokens``: all of them unless partial pieces are allowed."""
        if not self.allow_partial:
            return wanted
        return max(1, min(wanted, self.min_piece_tokens, pool_tokens))


class AdaptiveSizer:
    """Sizes the first allocation of a room from the lengths seen so far.

    Allocates the ``quantile`` of the last ``window`` observed lengths (so about
    ``1 - quantile`` of rooms resume), starting from ``default_tokens`` until
    ``min_samples`` lengths are known; never below one block. The receiver gives back
    over-allocated blocks as soon as the first piece lands, so the cost of
    over-allocating lasts one transfer.
    """

    def __init__(
        self,
        default_tokens: int,
        quantile: float = 0.99,
        window: int = 1024,
        min_samples: int = 32,
        adaptive: bool = True,
    ) -> None:
        if not 0.0 < quantile <= 1.0:
            raise ValueError(f"quantile must be in (0, 1], got {quantile}")
        self.default_tokens = default_tokens
        self.quantile = quantile
        self.min_samples = min_samples
        self.adaptive = adaptive
        self._seen: deque[int] = deque(maxlen=window)
        self._cached: int | None = None

    def observe(self, total_tokens: int) -> None:
        """Record the length of a finished room."""
        if self.adaptive:
            self._seen.append(total_tokens)
            self._cached = None

    def initial_tokens(self, hint: int | None = None) -> int:
        """Tokens to allocate for a new room; a scheduler's hint wins."""
        if hint is not None and hint > 0:
            return hint
        if not self.adaptive or len(self._seen) < self.min_samples:
            return self.default_tokens
        if self._cached is None:
            ordered = sorted(self._seen)
            index = min(len(ordered) - 1, int(self.quantile * len(ordered)))
            self._cached = ordered[index]
        return self._cached
