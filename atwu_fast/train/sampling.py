"""Checkpointable batch order: endless shuffled epochs of row indices."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch


class EpochSampler:
    """Shuffled epochs over ``n_rows`` rows, ``batch_size`` at a time (an epoch's last short batch is
    kept unless it has fewer than ``min_batch`` rows: a distributed run needs a row for every rank). Its whole state (generator, current order, position) round-trips through
    :meth:`state_dict`, so a resumed run sees exactly the batches it would have seen.

    ``lengths`` (one per row) with ``group`` ≥ 1 batches rows of similar length: each epoch's shuffled
    order is cut into chunks of ``group`` batches, each chunk sorted by length and cut into batches,
    and the full batches are visited in a shuffled order (the one short batch, if any, last). A padded
    batch then costs about its rows' mean length instead of its longest row's; which rows meet in a
    batch is still random within a chunk. Without them the order is the plain shuffle.
    """

    def __init__(self, n_rows: int, batch_size: int, seed: int, min_batch: int = 1,
                 lengths: Optional[Sequence[int]] = None, group: int = 0):
        if n_rows < 1:
            raise ValueError("cannot sample batches from an empty set")
        if min(n_rows, batch_size) < min_batch:
            raise ValueError(f"batches of {min(n_rows, batch_size)} rows cannot give each of {min_batch} ranks a row")
        if lengths is not None and len(lengths) != n_rows:
            raise ValueError(f"{len(lengths)} lengths for {n_rows} rows")
        self.n_rows, self.batch_size, self.min_batch = n_rows, batch_size, min_batch
        self.lengths = list(lengths) if lengths is not None and group >= 1 else None
        self.group = group
        self.generator = torch.Generator().manual_seed(seed)
        self.order: list[int] = []
        self.position = 0

    def __iter__(self):
        return self

    def __next__(self) -> list[int]:
        if len(self.order) - self.position < self.min_batch:  # epoch done (or its tail too short)
            self.order = self.epoch_order()
            self.position = 0
        batch = self.order[self.position:self.position + self.batch_size]
        self.position += self.batch_size
        return batch

    def epoch_order(self) -> list[int]:
        """One epoch's rows in visiting order (consecutive ``batch_size`` slices are its batches)."""
        order = torch.randperm(self.n_rows, generator=self.generator).tolist()
        if self.lengths is None:
            return order
        size, span = self.batch_size, self.batch_size * self.group
        batches = []
        for start in range(0, len(order), span):
            chunk = sorted(order[start:start + span], key=self.lengths.__getitem__)
            batches += [chunk[i:i + size] for i in range(0, len(chunk), size)]
        full = [b for b in batches if len(b) == size]
        short = [b for b in batches if len(b) < size]  # only the last chunk's last batch can be short
        visit = torch.randperm(len(full), generator=self.generator).tolist()
        return [row for j in visit for row in full[j]] + [row for b in short for row in b]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "order": list(self.order), "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.order = list(state["order"])
        self.position = int(state["position"])
