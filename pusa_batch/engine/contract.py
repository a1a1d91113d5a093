"""What the driver and its workers say to each other, sent over Ray as they are.

The driver sends a `Task` (an `Item`, its fingerprint and attempt) and gets back a `Result`; a
failed item's `Result` carries an `ItemError`. `Pending` is the driver's own bookkeeping of an
item until it is done or finally failed. States are enums, never bare strings.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from pusa_batch.item import Item


class Outcome(str, enum.Enum):
    DONE = "done"
    FAILED = "failed"


class SlotState(str, enum.Enum):
    LOADING = "loading"
    READY = "ready"
    RESTARTING = "restarting"
    DEAD = "dead"


class RefKind(enum.Enum):
    """What a Ray reference the driver waits on will answer."""

    ITEM = "item"
    INFO = "info"
    PROGRESS = "progress"


@dataclass(frozen=True)
class Task:
    item: Item
    fingerprint: str
    attempt: int  # 1-based
    queued_at: float  # driver wall clock when it was sent


@dataclass(frozen=True)
class ItemError:
    error_type: str
    message: str
    traceback: str = ""
    stage: str | None = None  # prepare | sample | finish | write
    node: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "error_type": self.error_type,
            "message": self.message,
            "traceback": self.traceback,
            "stage": self.stage,
            "node": self.node,
        }


@dataclass(frozen=True)
class Result:
    id: str
    outcome: Outcome
    attempt: int
    worker: str | None = None
    node: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    error: ItemError | None = None  # set when outcome is FAILED

    @property
    def done(self) -> bool:
        return self.outcome is Outcome.DONE


@dataclass
class Pending:
    """An item the driver still owes: queued, in flight, or waiting for a retry."""

    item: Item
    fingerprint: str
    cost: int = 0  # relative work, for longest_first
    attempts: int = 0  # failed attempts so far
    tried: set[str] = field(default_factory=set)

    @property
    def id(self) -> str:
        return self.item.id
