"""Batch padding: pad values, left/right sides, masks from lengths."""

import pytest
import torch

from atwu_fast.data.collate import collate

PAD, EOS = 2, 1


def _rows():
    return [
        {"input_ids": [0, 7, 8, 9, EOS], "labels": [-100, -100, 8, 9, EOS], "span_kind": [-1, -1, 2, 0, 0]},
        {"input_ids": [0, 5, EOS], "labels": [-100, 5, EOS], "span_kind": [-1, 1, 0]},
    ]


def test_right_padding():
    b = collate(_rows(), pad_id=PAD)
    assert b["input_ids"].tolist() == [[0, 7, 8, 9, EOS], [0, 5, EOS, PAD, PAD]]
    assert b["labels"].tolist() == [[-100, -100, 8, 9, EOS], [-100, 5, EOS, -100, -100]]
    assert b["span_kind"].tolist() == [[-1, -1, 2, 0, 0], [-1, 1, 0, -1, -1]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert all(t.dtype == torch.long for t in b.values())


def test_left_padding_prompts_only():
    b = collate([{"input_ids": [0, 4, 5]}, {"input_ids": [0]}], pad_id=PAD, side="left")
    assert set(b) == {"input_ids", "attention_mask"}
    assert b["input_ids"].tolist() == [[0, 4, 5], [PAD, PAD, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]


def test_mask_from_lengths_not_ids():
    # a row whose real tokens equal the pad id and eos id stays fully attended
    b = collate([{"input_ids": [PAD, EOS, EOS]}, {"input_ids": [EOS]}], pad_id=EOS)
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_bad_batches():
    with pytest.raises(ValueError):
        collate([], pad_id=PAD)
    with pytest.raises(ValueError):
        collate(_rows(), pad_id=PAD, side="middle")
    rows = _rows()
    del rows[1]["span_kind"]
    with pytest.raises(ValueError):
        collate(rows, pad_id=PAD)
    rows = _rows()
    rows[0]["labels"] = rows[0]["labels"][:-1]
    with pytest.raises(ValueError):
        collate(rows, pad_id=PAD)
