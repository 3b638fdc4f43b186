"""Padding token-id lists into tensors: prompts on the left (so generation continues from the last
column), responses and training sequences on the right. Masks are bool, True = real token."""

from __future__ import annotations

from typing import Sequence

import torch


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask), each (B, max_len), padding on the left."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row):] = True
    return ids, mask


def right_pad(rows: Sequence[Sequence[int]], pad_id: int, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask), each (B, width), padding on the right."""
    width = width or max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        if row:
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = True
    return ids, mask


def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only: `cumsum(mask) − 1`, clamped at 0 for left padding,
    so a left-padded row gets the same positions (and logits) as the unpadded one."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def first_true_after(flags: torch.Tensor) -> torch.Tensor:
    """Bool (B, T): True at positions strictly after the first True of each row."""
    seen = flags.long().cumsum(-1)
    return (seen - flags.long()) > 0
