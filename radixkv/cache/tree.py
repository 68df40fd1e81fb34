"""The radix tree over token prefixes: page-aligned match, insert and split.

Every node holds a run of whole pages (its key is a multiple of `page_size` tokens long) and, per
tier, where those pages live. This module owns structure only; which tier holds what, and when
pages move, is decided by `radixkv.cache.hicache`.

Path-counted references: `lock_ref` (running requests) and `io_ref` (copies in flight) are
incremented on a node and every ancestor, so a split that inserts a new ancestor simply copies
the counts, and releasing from the original node still walks over the new ancestor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence


class TreeNode:
    __slots__ = (
        "key",
        "parent",
        "children",
        "device",
        "host",
        "remote",
        "device_children",
        "lock_ref",
        "io_ref",
        "hits",
        "last_access",
        "depth",
        "page_keys",
        "heap_token",
        "heap_prio",
        "diverged",
        "policy_tag",
        "prefetch_mark",
        "admit_class",
        "admit_fate",
        "admit_since",
    )

    def __init__(self, key: tuple[int, ...], parent: TreeNode | None, depth: int) -> None:
        self.key = key  # tokens of this node's pages, len(key) % page_size == 0
        self.parent = parent
        self.children: dict[tuple[int, ...], TreeNode] = {}  # first page's tokens -> child
        self.device: list[int] | None = None  # device page per page of key, or None
        self.host: list[int] | None = None  # host page per page of key, or None
        self.remote = False  # every page of this node is (believed) stored in the remote tier
        self.device_children = 0  # children with device pages (a device leaf has none)
        self.lock_ref = 0
        self.io_ref = 0
        self.hits = 0  # requests whose match covered this node
        self.last_access = 0  # logical clock of the last match or insert touching it
        self.depth = depth  # tokens from the root to the end of this node
        self.page_keys: list[bytes] | None = None  # chained remote keys, computed lazily
        self.heap_token: list[int | None] = [None, None, None]  # per tier: live heap entry id
        self.heap_prio: list[object] = [None, None, None]
        self.diverged = False  # a request shared this node's prefix, then went elsewhere (split)
        self.policy_tag: object = None  # an eviction policy's note on this node (its signature)
        # set by `radixkv.cache.prefetch.prefetcher` on pages it moved up and nobody has read yet:
        # bit (1 << tier) per tier so filled, the kind of prediction in bits 4 and up
        self.prefetch_mark = 0
        self.admit_class: tuple[int, int] | None = None  # `radixkv.cache.remote_admission`'s class,
        self.admit_fate = 0  # whether its outcome is tracked (1) or known (2),
        self.admit_since = 0  # and the cache clock when it was written through

    @property
    def num_tokens(self) -> int:
        return len(self.key)

    @property
    def is_root(self) -> bool:
        return self.parent is None

    def resident_anywhere(self) -> bool:
        return self.device is not None or self.host is not None or self.remote

    def path_to_root(self) -> Iterator[TreeNode]:
        """This node and its ancestors, excluding the root."""
        node = self
        while node.parent is not None:
            yield node
            node = node.parent

    def __repr__(self) -> str:
        tiers = "".join(
            t for t, on in (("D", self.device), ("H", self.host), ("R", self.remote)) if on
        )
        return f"TreeNode(tokens={len(self.key)}, depth={self.depth}, tiers={tiers or '-'}, lock={self.lock_ref})"


class RadixTree:
    """A page-aligned radix tree. Keys compare a page at a time (tuple equality runs in C)."""

    def __init__(
        self, page_size: int, on_split: Callable[[TreeNode, TreeNode], None] | None = None
    ) -> None:
        """`on_split(upper, lower)` is told of every split (an owner re-files both halves)."""
        if page_size <= 0:
            raise ValueError(f"page_size must be positive, got {page_size}")
        self.page_size = page_size
        self.on_split = on_split
        self.root = TreeNode((), None, 0)
        self.num_nodes = 1

    def aligned(self, n: int) -> int:
        return n - n % self.page_size

    def walk(self, tokens: Sequence[int]) -> tuple[list[TreeNode], int]:
        """Follow `tokens` down the tree, splitting a node where the match ends inside it.

        Returns the matched nodes root-exclusive, in path order, and the matched token count
        (page-aligned; every returned node is fully matched).
        """
        ps = self.page_size
        tokens = tuple(tokens[: self.aligned(len(tokens))])
        node, pos, path = self.root, 0, []
        while pos < len(tokens):
            child = node.children.get(tokens[pos : pos + ps])
            if child is None:
                break
            n = len(child.key)
            if tokens[pos : pos + n] == child.key:
                matched = n
            else:
                matched = self._common_pages(child.key, tokens, pos)
                child = self.split(child, matched)
            path.append(child)
            pos += matched
            node = child
        return path, pos

    def _common_pages(self, key: tuple[int, ...], tokens: tuple[int, ...], pos: int) -> int:
        ps, n = self.page_size, min(len(key), len(tokens) - pos)
        matched = ps  # the first page matched through the children lookup
        while (
            matched + ps <= n
            and key[matched : matched + ps] == tokens[pos + matched : pos + matched + ps]
        ):
            matched += ps
        return matched

    def split(self, node: TreeNode, at: int) -> TreeNode:
        """Split `node` after `at` tokens (page-aligned, 0 < at < len); returns the new upper part."""
        ps = self.page_size
        assert 0 < at < len(node.key) and at % ps == 0, (at, len(node.key))
        parent = node.parent
        assert parent is not None
        k = at // ps
        upper = TreeNode(node.key[:at], parent, node.depth - len(node.key) + at)
        upper.device = node.device[:k] if node.device is not None else None
        upper.host = node.host[:k] if node.host is not None else None
        upper.remote = node.remote
        upper.lock_ref, upper.io_ref = node.lock_ref, node.io_ref
        upper.hits, upper.last_access = node.hits, node.last_access
        upper.prefetch_mark, upper.admit_class = node.prefetch_mark, node.admit_class
        # the outcome stays the lower part's (a split must not count one node twice)
        if node.page_keys is not None:
            upper.page_keys, node.page_keys = node.page_keys[:k], node.page_keys[k:]
        node.key = node.key[at:]
        node.device = node.device[k:] if node.device is not None else None
        node.host = node.host[k:] if node.host is not None else None
        node.parent = upper
        node.diverged = True
        upper.children[node.key[:ps]] = node
        upper.device_children = 1 if node.device is not None else 0
        parent.children[upper.key[:ps]] = upper
        self.num_nodes += 1
        if self.on_split is not None:
            self.on_split(upper, node)
        return upper

    def add_child(self, parent: TreeNode, key: tuple[int, ...]) -> TreeNode:
        """A new node under `parent`; its first page must not collide with a sibling's."""
        assert key and len(key) % self.page_size == 0
        first = key[: self.page_size]
        assert first not in parent.children, "add_child over an existing branch"
        node = TreeNode(key, parent, parent.depth + len(key))
        parent.children[first] = node
        self.num_nodes += 1
        return node

    def remove_leaf(self, node: TreeNode) -> None:
        assert not node.children and node.parent is not None
        del node.parent.children[node.key[: self.page_size]]
        node.parent = None
        self.num_nodes -= 1

    def nodes(self) -> Iterator[TreeNode]:
        """Every node except the root (a full traversal: integrity checks and flushes only)."""
        stack = list(self.root.children.values())
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())
