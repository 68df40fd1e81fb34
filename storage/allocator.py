"""A free-page allocator with exact accounting: every index is either free or handed out."""

from __future__ import annotations

from collections.abc import Iterable


class OutOfPages(RuntimeError):
    """Raised when a pool cannot supply the pages asked for, even after eviction."""


class PageAllocator:
    """Hands out page indices in [0, capacity) from a free stack.

    `alloc` and `free` cost O(pages moved). A double free or freeing an index that was never
    handed out raises immediately, so ownership bugs surface where they happen.
    """

    def __init__(self, capacity: int) -> None:
        if not isinstance(capacity, int) or capacity < 0:
            raise ValueError(f"capacity must be a non-negative integer, got {capacity!r}")
        self.capacity = capacity
        # Popped from the end: low indices first, which keeps fresh pools compact.
        self._free: list[int] = list(range(capacity - 1, -1, -1))
        self._is_free = bytearray(b"\x01") * capacity

    @property
    def num_free(self) -> int:
        return len(self._free)

    def alloc(self, n: int) -> list[int]:
        """Take `n` free pages; raises OutOfPages (taking nothing) if fewer are free."""
        if n < 0:
            raise ValueError(f"cannot allocate {n} pages")
        if n > len(self._free):
            raise OutOfPages(f"asked for {n} pages, {len(self._free)} of {self.capacity} free")
        if n == 0:
            return []
        pages = self._free[-n:]
        del self._free[-n:]
        is_free = self._is_free
        for p in pages:
            is_free[p] = 0
        return pages

    def free(self, pages: Iterable[int]) -> None:
        """Return pages to the pool. Raises ValueError on a double free or a foreign index."""
        pages = list(pages)
        is_free = self._is_free
        for i, p in enumerate(pages):
            if not 0 <= p < self.capacity or is_free[p]:
                for q in pages[:i]:  # undo, so a failed free leaves the state unchanged
                    is_free[q] = 0
                state = "out of range" if not 0 <= p < self.capacity else "already free"
                raise ValueError(f"freeing page {p}: {state}")
            is_free[p] = 1
        self._free.extend(pages)

    def free_set(self) -> set[int]:
        """The free indices (a full copy: for integrity checks, not hot paths)."""
        return set(self._free)

    def check(self) -> None:
        """Internal consistency: the free stack and the free map agree and hold no duplicates."""
        assert len(set(self._free)) == len(self._free), "duplicate index in the free stack"
        assert sum(self._is_free) == len(self._free), "free map and free stack disagree"
        for p in self._free:
            assert self._is_free[p], f"page {p} on the free stack but marked used"
