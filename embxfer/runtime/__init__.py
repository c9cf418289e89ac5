"""The runtime under both engines: one pump thread per engine feeds room machines and
carries out their actions.

Everything that touches rooms runs on the pump thread: inbound control messages,
scheduler commands (queued by the handles), write completions (queued by the writer
threads) and timers. So no room is ever touched by two threads, and a room's actions
run in order before its next event. Scheduler threads read only what the pump
publishes (``RoomStatus``), and the rooms that ended, if they watch (``EndedRooms``).
"""

from embxfer.runtime.ended import EndedRooms
from embxfer.runtime.engine import Engine, Router
from embxfer.runtime.rooms import RoomStatus, RoomTable, Tracked
from embxfer.runtime.stats import EngineStats, TransferFailed, reason_category

__all__ = [
    "EndedRooms",
    "Engine",
    "EngineStats",
    "RoomStatus",
    "RoomTable",
    "Router",
    "Tracked",
    "TransferFailed",
    "reason_category",
]
