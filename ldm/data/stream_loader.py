"""``StreamLoader``: the DataLoader of a :class:`~ldm.data.webdataset_stream.ShardStream` that knows, for every
batch it served, where the worker slot that made it stood, so that a checkpoint can record "the next unseen
sample" of every slot and a resumed run continues there.

Batches come from the workers in turn (torch's in-order round robin), so batch ``n`` of an iteration is the next
batch of slot ``(first slot + n) mod W``. After ``n`` consumed batches the state is the position each slot had in
its last consumed batch and the slot that serves next; a resumed iteration hands every slot its position back and
rotates the slots so that physical worker 0 serves the slot that was next. (Near the end of a finite pass, when
some slots have run dry, the round robin skips them and a resumed run may serve the last batches in another order.)

The epoch counter and the count of consumed batches are :class:`ldm.cli.resumable_data.EpochPosition`'s: the count
is the training loop's processed batches when the data module wires it (a batch prefetched for a step that did not
run is not consumed), else the batches this loader served.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any

from torch.utils.data import DataLoader

from ldm.cli.resumable_data import EpochPosition
from ldm.data.webdataset_stream import POSITION_KEY, ShardStream, StreamPlan, WorkerPosition

logger = logging.getLogger(__name__)


class ServedBatches:
    """The positions of the batches one iteration served: the last ``history`` exactly, the older ones folded in.

    :param first: batches already consumed before this iteration began (a resumed epoch).
    :param start: the slots' positions at ``first``; ``next_slot`` the slot that serves next.
    """

    history = 256

    def __init__(self, first: int, start: dict[int, WorkerPosition], next_slot: int, slots: int):
        self.count, self.slots = first, slots
        self.settled, self.settled_count, self.settled_next = dict(start), first, next_slot
        self.recent: deque[WorkerPosition] = deque()

    def add(self, record: WorkerPosition) -> None:
        self.recent.append(record)
        self.count += 1
        if len(self.recent) > self.history:
            old = self.recent.popleft()
            self.settled[old.slot] = old
            self.settled_count += 1
            self.settled_next = (old.slot + 1) % self.slots

    def at(self, consumed: int) -> tuple[dict[int, WorkerPosition], int]:
        """Every slot's position and the next slot after ``consumed`` batches of this epoch."""
        if consumed < self.settled_count:
            logger.warning("data stream state asked for batch %d, older than the %d kept; recording batch %d",
                           consumed, self.history, self.settled_count)
            consumed = self.settled_count
        positions, next_slot = dict(self.settled), self.settled_next
        for record in islice(self.recent, max(0, consumed - self.settled_count)):
            positions[record.slot] = record
            next_slot = (record.slot + 1) % self.slots
        return positions, next_slot

    def skipped(self) -> dict[str, int]:
        """Samples skipped so far by reason, summed over the slots (as of the latest served batches)."""
        latest = dict(self.settled)
        for record in self.recent:
            latest[record.slot] = record
        total: Counter[str] = Counter()
        for record in latest.values():
            total.update(record.skipped)
        return dict(total)


class StreamLoader(DataLoader):
    """A ``DataLoader(stream, batch_size=None)`` (the stream batches) with :meth:`position_state` /
    :meth:`resume_from` for checkpoints; :class:`ldm.data.laion.WebDataModuleFromConfig` stores them as its
    ``state_dict``. ``on_skipped`` is called with the skip counts whenever they change."""

    #: Resumes through its data module's state; :func:`ldm.cli.resumable_data.as_resumable` leaves it as it is.
    resumes_itself = True

    def __init__(self, stream: ShardStream, num_workers: int = 0, position: EpochPosition | None = None,
                 on_skipped: Callable[[dict[str, int]], None] | None = None, **kwargs: Any):
        super().__init__(stream, batch_size=None, num_workers=num_workers, persistent_workers=False, **kwargs)
        self.position = position or EpochPosition(root=stream.options.seed)
        self.on_skipped = on_skipped
        self.served: ServedBatches | None = None
        self.complete = False
        self._carry: tuple[dict[int, WorkerPosition], int] | None = None
        self._reported: dict[str, int] = {}

    @property
    def slots(self) -> int:
        return max(1, self.num_workers)

    @property
    def skipped(self) -> dict[str, int]:
        """Samples skipped so far by reason (``bad_image``, ``no_caption``, ``min_size``, ...)."""
        return self.served.skipped() if self.served is not None else {}

    def _consumed(self) -> int:
        if self.served is None:
            return self.position.skip
        done = self.position.batches_done() if self.position.batches_done else None
        return self.served.count if done is None else int(done)

    def __iter__(self) -> Iterator[Any]:
        repeat = self.dataset.options.repeat
        if repeat and self.served is not None and self._carry is None:  # an endless stream goes on where it was
            self._carry = self.served.at(self._consumed())
        epoch, skip = self.position.begin_epoch()
        start, next_slot = self._carry if self._carry is not None else ({}, 0)
        self._carry = None
        self.dataset.plan = StreamPlan(epoch=epoch, rotation=next_slot, start=start)
        self.served = ServedBatches(skip, start, next_slot, self.slots)
        self.complete = False
        return self._batches(super().__iter__())

    def _batches(self, batches: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for batch in batches:
            self.served.add(WorkerPosition.from_dict(batch.pop(POSITION_KEY)))
            if self.on_skipped is not None:
                skipped = self.served.skipped()
                if skipped != self._reported:
                    self._reported = skipped
                    self.on_skipped(skipped)
            yield batch
        self.complete = True

    def position_state(self) -> dict[str, Any]:
        """``{"epoch", "batches", "complete", "slots", "next_slot", "workers"}``: the state after the consumed
        batches (JSON-friendly)."""
        consumed = self._consumed()
        if self.served is None:
            positions, next_slot = self._carry if self._carry is not None else ({}, 0)
            complete = False
        else:
            positions, next_slot = self.served.at(consumed)
            complete = self.complete and consumed >= self.served.count
        return {"epoch": self.position.epoch, "batches": consumed, "complete": complete, "slots": self.slots,
                "next_slot": next_slot, "workers": [p.as_dict() for _, p in sorted(positions.items())]}

    def resume_from(self, state: dict[str, Any]) -> None:
        """Make the next iteration continue after the batches ``state`` (from :meth:`position_state`) counts."""
        epoch, batches = int(state["epoch"]), int(state["batches"])
        if state.get("complete") and not self.dataset.options.repeat:
            self.position.epoch, self.position.skip, self.position.resuming = epoch + 1, 0, True
            return
        if int(state["slots"]) != self.slots:
            logger.warning("the data stream was saved with %s worker slot(s) and now has %d; restarting epoch %d "
                           "from its beginning (set data.params.num_workers to %s to resume exactly)",
                           state["slots"], self.slots, epoch, state["slots"])
            self.position.epoch, self.position.skip, self.position.resuming = epoch, 0, True
            return
        positions = {int(p["slot"]): WorkerPosition.from_dict(p) for p in state["workers"]}
        self._carry = (positions, int(state["next_slot"]))
        self.position.epoch, self.position.skip, self.position.resuming = epoch, batches, True
