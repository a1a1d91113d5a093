"""Fixed-width keys of ids and fingerprints, and sorted tables of them: the root's state in
16 bytes per done item instead of Python dicts of strings.

Decisions:
- A key is pandas' 64-bit SipHash of the text (`pd.util.hash_array`, its fixed key), computed
  column-wise in C. Keys live only in memory, never in the root, so a change of hash between
  versions cannot misread an output root.
- 0 means "no text" (a done item recorded without a fingerprint); a text hashing to 0 is moved
  to 1. Two different ids share a key with probability about n^2 / 2^65 (5e-8 for 1M done
  ids against a 1M-row manifest); with a pipeline that shows as a changed item (the run stops
  and names it), never as a silently skipped one unless the fingerprints collide too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

NO_KEY = np.uint64(0)
KEY = np.uint64
_SLICE = 65_536


def text_keys(texts: np.ndarray | pa.Array | pa.ChunkedArray | Iterable[str | None]) -> np.ndarray:
    """One uint64 key per text; None (or a null) gives NO_KEY."""
    if isinstance(texts, (pa.Array, pa.ChunkedArray)):  # a slice at a time: few objects alive
        slices = [texts.slice(i, _SLICE) for i in range(0, len(texts), _SLICE)]
        keys = [_keys(s.to_numpy(zero_copy_only=False)) for s in slices]
        return np.concatenate(keys) if keys else np.zeros(0, dtype=KEY)
    if isinstance(texts, np.ndarray):
        values = texts
    else:
        values = np.fromiter(texts, dtype=object)
    return _keys(values)


def _keys(values: np.ndarray) -> np.ndarray:
    values = values.astype(object, copy=False)
    if len(values) == 0:
        return np.zeros(0, dtype=KEY)
    keys = pd.util.hash_array(values, categorize=False)
    keys[keys == NO_KEY] = 1
    missing = pd.isna(values)
    if missing.any():
        keys[missing] = NO_KEY
    return keys


def text_key(text: str | None) -> int:
    return int(text_keys(np.array([text], dtype=object))[0])


@dataclass(frozen=True)
class KeyTable:
    """Sorted, unique uint64 keys, each with one uint64 value (a fingerprint key here)."""

    keys: np.ndarray
    values: np.ndarray

    @staticmethod
    def empty() -> KeyTable:
        return KeyTable(np.zeros(0, dtype=KEY), np.zeros(0, dtype=KEY))

    @staticmethod
    def latest(keys: np.ndarray, values: np.ndarray) -> KeyTable:
        """The table of (key, value) pairs, a later pair winning over an earlier one."""
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        last = np.ones(len(order), dtype=bool)
        last[:-1] = sorted_keys[1:] != sorted_keys[:-1]
        return KeyTable(sorted_keys[last], values[order][last])

    def __len__(self) -> int:
        return len(self.keys)

    def find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(whether each key is in the table, its value there, NO_KEY where absent)."""
        if len(self.keys) == 0:
            return np.zeros(len(keys), dtype=bool), np.zeros(len(keys), dtype=KEY)
        order = np.argsort(keys)  # sorted queries walk the table in order: far fewer misses
        pos = np.empty(len(keys), dtype=np.intp)
        pos[order] = np.searchsorted(self.keys, keys[order])
        pos = np.minimum(pos, len(self.keys) - 1)
        found = self.keys[pos] == keys
        return found, np.where(found, self.values[pos], NO_KEY)

    def contains(self, keys: np.ndarray) -> np.ndarray:
        return self.find(keys)[0]

    def without(self, keys: np.ndarray) -> KeyTable:
        keep = ~np.isin(self.keys, keys)
        return KeyTable(self.keys[keep], self.values[keep])

    def with_pairs(self, keys: np.ndarray, values: np.ndarray) -> KeyTable:
        """This table with these pairs added; they win over pairs already here."""
        if len(keys) == 0:
            return self
        return KeyTable.latest(
            np.concatenate([self.keys, keys]), np.concatenate([self.values, values])
        )


def key_set(texts: Iterable[str]) -> np.ndarray:
    """The sorted keys of some texts, for `np.isin` / `searchsorted` membership."""
    return np.unique(text_keys(np.fromiter(texts, dtype=object)))
