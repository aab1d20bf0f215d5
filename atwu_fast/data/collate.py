"""Pad encoded rows into a batch; the attention mask comes from lengths, never from token ids."""

from __future__ import annotations

import torch

from .encode import IGNORE_INDEX, NOT_ANSWER

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
