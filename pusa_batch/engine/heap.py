"""Freed memory handed back to the system while a long run goes on.

The driver frees about as much as it allocates (manifest chunks, results, index parts), but
glibc's malloc keeps freed blocks in its arenas and Arrow's allocator keeps its pages, so its RSS
read as growth of about 1 KB per item (B13) of which little stayed alive: with both given back at
each mark, a 40,000-item run's RSS was flat. RSS is what a container's memory limit counts, so
the driver gives them back every few seconds (a trim takes about 1 ms).
"""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim`, or None where the C library has none (macOS, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the C library this process already runs on
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_freed_memory() -> None:
    """Give malloc's free pages and Arrow's unused ones back to the system; live memory stays."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
    arrow = sys.modules.get("pyarrow")  # never imported for this alone
    if arrow is not None:
        arrow.default_memory_pool().release_unused()
