"""Filesystem wrappers for store tests and benchmarks: count calls, fail some, fail transiently.

Each wraps a real fsspec filesystem and forwards everything; only the storage calls listed in
`STORAGE_CALLS` are counted or made to fail. (Helpers only: this module holds no tests.)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

STORAGE_CALLS = frozenset(
    {
        "cat_file",
        "cat",
        "pipe_file",
        "pipe",
        "info",
        "ls",
        "find",
        "exists",
        "rm_file",
        "rm",
        "mv",
        "link",
        "open",
        "makedirs",
        "put_file",
        "get_file",
    }
)


class ProxyFS:
    """Forwards to `inner`; `before(name, args)` runs ahead of every storage call."""

    def __init__(self, inner: Any):
        self.inner = inner

    def before(self, name: str, args: tuple) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name not in STORAGE_CALLS:
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self.before(name, args)
            return attr(*args, **kwargs)

        return call


class CountingFS(ProxyFS):
    """Counts storage calls by method name; a call on a list of paths counts once per path."""

    def __init__(self, inner: Any):
        super().__init__(inner)
        self.calls: Counter[str] = Counter()

    def before(self, name: str, args: tuple) -> None:
        first = args[0] if args else None
        self.calls[name] += len(first) if isinstance(first, list) else 1

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def reset(self) -> None:
        self.calls.clear()


class FailingFS(ProxyFS):
    """Raises `error()` on storage calls whose (name, path) match `when` - a crash stand-in."""

    def __init__(
        self, inner: Any, when: Callable[[str, str], bool], error: Callable[[], Exception]
    ):
        super().__init__(inner)
        self.when = when
        self.error = error

    def before(self, name: str, args: tuple) -> None:
        path = str(args[-1] if name in {"mv", "link"} else args[0]) if args else ""
        if self.when(name, path):
            raise self.error()


class FlakyFS(ProxyFS):
    """Every distinct storage call fails its first `k` attempts with a transient error."""

    def __init__(self, inner: Any, k: int = 2):
        super().__init__(inner)
        self.k = k
        self.seen: Counter[tuple] = Counter()
        self.failures = 0

    def before(self, name: str, args: tuple) -> None:
        key = (name, repr(args[:2]))
        self.seen[key] += 1
        if self.seen[key] <= self.k:
            self.failures += 1
            if self.failures % 2:
                raise ConnectionError("Connection reset by peer")
            raise OSError(503, "Service Unavailable: please reduce your request rate")
