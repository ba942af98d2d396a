"""The fill-mask graph's control inputs (`top_k`, `target_ids`, `exclude_special`), built in one place
so that the predictor, the scorer, parity and the benchmarks feed a graph the same way.

Only the names a graph declares are fed: an artifact exported before scoring existed has no
`target_ids`, and fill-mask calls on it keep working.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

CONTROL_INPUTS = ("top_k", "target_ids", "exclude_special")
NO_TARGETS = np.zeros((1, 0), dtype=np.int64)  # one empty row, broadcast to every mask: no scoring work


def control_feeds(names: Iterable[str], top_k: int, target_ids: np.ndarray | None = None,
                  exclude_special: bool = False) -> dict[str, np.ndarray]:
    """The control feeds among `names`: `target_ids` is `[1, T]` (the same targets at every mask) or
    `[num_masks, T]` (a row per mask, in the graph's row-major mask order)."""
    values = {"top_k": np.array(top_k, dtype=np.int64),
              "target_ids": NO_TARGETS if target_ids is None else np.ascontiguousarray(target_ids, dtype=np.int64),
              "exclude_special": np.array(bool(exclude_special))}
    return {name: values[name] for name in names if name in values}
