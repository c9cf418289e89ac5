"""An encoder-side scheduler loop: create the room, run the encoder, send, poll, release.

The room is created when the request arrives, before the encoder runs, so receivers
that ask early find it (the engine would hold their requests for a while anyway). The
scheduler never blocks: each ``step`` runs the encoder on what is waiting and polls
what is being sent, as SGLang's event loop does with its disaggregation queues.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from embxfer import EmbeddingPayload, KVPoll, SenderEngine, SenderHandle, TransferFailed

LOG = logging.getLogger("examples.encoder")


@dataclass(frozen=True)
class EncodeRequest:
    """A multimodal request reaching the encoder: its room and its length in tokens
    (known once the images are preprocessed)."""

    room_id: int
    num_tokens: int


class EncoderScheduler:
    """Runs the encoder and hands each embedding to the sender engine."""

    def __init__(
        self, engine: SenderEngine, encode: Callable[[EncodeRequest], EmbeddingPayload]
    ) -> None:
        self.engine = engine
        self.encode = encode
        self.waiting: deque[tuple[EncodeRequest, SenderHandle]] = deque()
        self.sending: dict[int, SenderHandle] = {}
        self.finished: dict[int, str] = {}  # room -> "" (Success) or the failure reason

    def add(self, request: EncodeRequest) -> None:
        self.waiting.append((request, self.engine.create_room(request.room_id)))

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.sending

    def step(self) -> None:
        """One scheduler iteration: encode one request (a batch, in a real server), then
        poll every room being sent."""
        if self.waiting:
            request, handle = self.waiting.popleft()
            handle.send(self.encode(request))  # copied into the engine's blocks
            self.sending[request.room_id] = handle
        for room_id, handle in list(self.sending.items()):
            state = handle.poll()
            if state is KVPoll.Success:
                self.finished[room_id] = ""
            elif state is KVPoll.Failed:
                try:
                    handle.failure_exception()
                except TransferFailed as failure:
                    LOG.warning("room=%d send failed: %s", room_id, failure.reason)
                    self.finished[room_id] = failure.reason
            else:
                continue  # Bootstrapping, WaitingForInput, Transferring: poll again later
            handle.release()  # the engine frees the source blocks once no write needs them
            del self.sending[room_id]
