import hypothesis.strategies as st
import pytest
from hypothesis import given

from storage import OutOfPages, PageAllocator


@given(st.integers(0, 64), st.lists(st.tuples(st.booleans(), st.integers(0, 20)), max_size=60))
def test_alloc_free_matches_a_set_model(capacity, ops):
    alloc = PageAllocator(capacity)
    held: list[int] = []
    for is_alloc, n in ops:
        if is_alloc:
            if n > capacity - len(held):
                with pytest.raises(OutOfPages):
                    alloc.alloc(n)
            else:
                pages = alloc.alloc(n)
                assert len(pages) == n and not set(pages) & set(held)
                held += pages
        else:
            give, held = held[:n], held[n:]
            alloc.free(give)
        assert alloc.num_free + len(held) == capacity
        assert alloc.free_set() == set(range(capacity)) - set(held)
        alloc.check()


def test_double_free_and_foreign_pages_raise_and_change_nothing():
    alloc = PageAllocator(4)
    a = alloc.alloc(2)
    alloc.free(a[:1])
    with pytest.raises(ValueError, match="already free"):
        alloc.free([a[1], a[0]])
    with pytest.raises(ValueError, match="out of range"):
        alloc.free([7])
    assert alloc.num_free == 3
    alloc.check()


def test_bad_sizes():
    with pytest.raises(ValueError):
        PageAllocator(-1)
    with pytest.raises(ValueError):
        PageAllocator(3).alloc(-1)
