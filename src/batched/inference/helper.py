"""Helpers of batched 0.1.5 kept under their import path, on this engine.

``stack_features`` pads model features natively (the padding of the inference
front ends, ``batched._padding``), keeping each feature's dtype (0.1.5 cast
every feature to int64). The others split and join features and outputs with
numpy or torch, whichever the values are. numpy and torch are imported only
when a value of theirs is passed.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

Feature = Any


def torch_or_np(item: Any) -> Any:
    """The module (numpy or torch) of ``item``, or of the first value of a
    dict, list or tuple of them; ValueError for anything else."""
    if isinstance(item, (Mapping, list, tuple)) and item:
        return torch_or_np(next(iter(item.values())) if isinstance(item, Mapping) else item[0])
    np, torch = sys.modules.get("numpy"), sys.modules.get("torch")
    if np is not None and isinstance(item, (np.ndarray, np.generic)):
        return np
    if torch is not None and torch.is_tensor(item):
        return torch
    raise ValueError(f"Unsupported input type: {type(item)}")


def stack_features(
    inputs: list[dict[str, Feature]], pad_tokens: Mapping[str, Any], padding_side: str = "right"
) -> dict[str, Feature]:
    """Pads one row per input into a batch: ``inputs[i][key]`` is a row
    ``[L_i, ...]``; the result maps each key to ``[len(inputs), max L, ...]``,
    padded with ``pad_tokens.get(key, 0)`` on ``padding_side``, in the rows'
    dtype (numpy arrays, or CPU torch tensors)."""
    from batched._padding import RowsCollator  # noqa: PLC0415

    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if not inputs:
        raise ValueError("stack_features: no inputs")
    collator = RowsCollator("stack_features", dict(pad_tokens), padding_side)
    spans = [(collator.request({key: [row] for key, row in item.items()}), 0, 1) for item in inputs]
    return collator.collate(spans)


def unstack_features(inputs: dict[str, Feature]) -> list[dict[str, Feature]]:
    """A batch of features as one dict per row."""
    n = len(next(iter(inputs.values())))
    return [{key: value[i] for key, value in inputs.items()} for i in range(n)]


def stack_outputs(outputs: list[Feature]) -> Feature:
    """Per-row outputs (arrays, or dicts or lists of them) stacked into one batch."""
    lib = torch_or_np(outputs)
    first = outputs[0]
    if isinstance(first, Mapping):
        return {key: lib.stack([out[key] for out in outputs]) for key in first}
    if isinstance(first, list):
        return [lib.stack(list(group)) for group in zip(*outputs)]
    return lib.stack(outputs)


def unstack_outputs(outputs: Feature) -> list[Feature]:
    """A batch of outputs (an array, or a dict or list of them) as one per row."""
    if isinstance(outputs, Mapping):
        n = len(next(iter(outputs.values())))
        return [{key: value[i] for key, value in outputs.items()} for i in range(n)]
    if isinstance(outputs, list):
        return [list(row) for row in zip(*outputs)]
    return [outputs[i] for i in range(len(outputs))]


__all__ = ["stack_features", "stack_outputs", "torch_or_np", "unstack_features", "unstack_outputs"]
