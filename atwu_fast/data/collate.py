"""Batching encoded rows: right/left padding (the attention mask comes from lengths, never from token
ids) or padding-free packing into one sequence."""

from __future__ import annotations

import torch

from .labels import IGNORE_INDEX, NOT_ANSWER

_PAD_VALUES = {"labels": IGNORE_INDEX, "span_kind": NOT_ANSWER}


def collate(rows: list[dict], pad_id: int, side: str = "right") -> dict[str, torch.Tensor]:
    """Batch rows holding ``input_ids`` (and optionally ``labels``, ``span_kind``).

    ``input_ids`` are padded with ``pad_id``, labels with -100, span kinds with -1. ``side="left"``
    pads on the left (generation prompts). Returns long tensors of shape (B, T_max) plus
    ``attention_mask`` (1 on real tokens).
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    if not rows:
        raise ValueError("cannot collate an empty batch")
    keys = ["input_ids"] + [k for k in _PAD_VALUES if k in rows[0]]
    for r in rows:
        if any(k not in r for k in keys) or any(k in r and k not in keys for k in _PAD_VALUES):
            raise ValueError("every row must have the same fields (input_ids, labels, span_kind)")
    lengths = [len(r["input_ids"]) for r in rows]
    for r, n in zip(rows, lengths):
        if any(len(r[k]) != n for k in keys):
            raise ValueError("input_ids, labels and span_kind must have equal lengths within a row")
    width = max(lengths)
    out: dict[str, torch.Tensor] = {}
    for key in keys:
        pad = pad_id if key == "input_ids" else _PAD_VALUES[key]
        t = torch.full((len(rows), width), pad, dtype=torch.long)
        for b, (r, n) in enumerate(zip(rows, lengths)):
            if n:
                vals = torch.as_tensor(r[key], dtype=torch.long)
                if side == "right":
                    t[b, :n] = vals
                else:
                    t[b, width - n:] = vals
        out[key] = t
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, n in enumerate(lengths):
        if side == "right":
            mask[b, :n] = 1
        elif n:
            mask[b, width - n:] = 1
    out["attention_mask"] = mask
    return out


def pack_rows(rows: list[dict]) -> dict[str, torch.Tensor]:
    """Concatenate encoded rows (``input_ids``, ``labels``) into one ``[1, ΣT_i]`` sequence.

    ``position_ids`` restart at 0 on every row (the boundary marker transformers reads); the label of
    each row's first token is set to −100 so that no token is predicted across a boundary.
    ``seq`` / ``offsets`` give each packed token's row and each row's start.
    """
    ids, labels, positions, seq, offsets, kinds = [], [], [], [], [], []
    start = 0
    for i, row in enumerate(rows):
        row_ids = torch.as_tensor(row["input_ids"], dtype=torch.long)
        row_labels = torch.as_tensor(row.get("labels", [IGNORE_INDEX] * len(row_ids)), dtype=torch.long).clone()
        row_labels[0] = IGNORE_INDEX
        ids.append(row_ids)
        labels.append(row_labels)
        positions.append(torch.arange(len(row_ids)))
        seq.append(torch.full((len(row_ids),), i, dtype=torch.long))
        if "span_kind" in row:
            kinds.append(torch.as_tensor(row["span_kind"], dtype=torch.long))
        offsets.append(start)
        start += len(row_ids)
    packed = {"input_ids": torch.cat(ids)[None], "labels": torch.cat(labels)[None],
              "position_ids": torch.cat(positions)[None], "seq": torch.cat(seq), "offsets": torch.tensor(offsets)}
    if kinds:
        packed["span_kind"] = torch.cat(kinds)[None]
    return packed
