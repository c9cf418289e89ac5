"""embxfer: resumable transfer of multimodal embeddings from encoder to language workers.

A scheduler creates one engine per process (``SenderEngine`` on the encoder,
``ReceiverEngine`` on each language rank) and one room handle per request; handles
are polled without blocking and report ``KVPoll`` states; or the engine tells the
scheduler which rooms ended (``watch_ended``).
"""

from embxfer.buffers.payload import EmbeddingPayload
from embxfer.config import EngineConfig
from embxfer.fsm.policy import ResumePolicy, SpillMode
from embxfer.fsm.poll import KVPoll
from embxfer.fsm.room import Timeouts
from embxfer.handles import ReceiverHandle, SenderHandle
from embxfer.receiver import ReceiverEngine
from embxfer.runtime import EndedRooms, EngineStats, TransferFailed
from embxfer.sender import SenderEngine

__all__ = [
    "EmbeddingPayload",
    "EndedRooms",
    "EngineConfig",
    "EngineStats",
    "KVPoll",
    "ReceiverEngine",
    "ReceiverHandle",
    "ResumePolicy",
    "SenderEngine",
    "SenderHandle",
    "SpillMode",
    "Timeouts",
    "TransferFailed",
]
