"""Checkpointable batch order: endless shuffled epochs of row indices."""

from __future__ import annotations

import torch


class EpochSampler:
    """Shuffled epochs over ``n_rows`` rows, ``batch_size`` at a time (an epoch's last short batch is
    kept unless it has fewer than ``min_batch`` rows: a distributed run needs a row for every rank). Its whole state (generator, current order, position) round-trips through
    :meth:`state_dict`, so a resumed run sees exactly the batches it would have seen."""

    def __init__(self, n_rows: int, batch_size: int, seed: int, min_batch: int = 1):
        if n_rows < 1:
            raise ValueError("cannot sample batches from an empty set")
        if min(n_rows, batch_size) < min_batch:
            raise ValueError(f"batches of {min(n_rows, batch_size)} rows cannot give each of {min_batch} ranks a row")
        self.n_rows, self.batch_size, self.min_batch = n_rows, batch_size, min_batch
        self.generator = torch.Generator().manual_seed(seed)
        self.order: list[int] = []
        self.position = 0

    def __iter__(self):
        return self

    def __next__(self) -> list[int]:
        if len(self.order) - self.position < self.min_batch:  # epoch done (or its tail too short)
            self.order = torch.randperm(self.n_rows, generator=self.generator).tolist()
            self.position = 0
        batch = self.order[self.position:self.position + self.batch_size]
        self.position += self.batch_size
        return batch

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "order": list(self.order), "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.order = list(state["order"])
        self.position = int(state["position"])
