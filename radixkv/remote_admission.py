"""Admission to the remote tier: write through only pages predicted to be read again.

Most inserted pages are never read again (56-75% of the tokens in the shared traces), and each
remote write costs the host CPU an encoding and the link its bytes. `RemoteAdmission` learns, per
class of node, the share of nodes that were read again before they left the host tier, and
admits a new node to the remote tier when its class's share reaches `threshold` (or while the
class has fewer than `min_samples` outcomes: it explores first). A node read again while on host
is alive whatever its class: it is written back when it leaves the host.

A node's class is fixed when it is inserted: whether its parent prefix had been read again (a
continuation of a reused context: a conversation's next turn, a shared system prompt's
follow-up) or is the root, and the log2 bucket of where it starts (early context is shared more
often than a long prompt's tail). `TierWrites` owns it (`cache.writes.admission`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from radixkv.tree import TreeNode

_MAX_BUCKET = 12


class RemoteAdmission:
    def __init__(self, page_size: int, threshold: float, min_samples: int = 32) -> None:
        self.page_size = page_size
        self.threshold, self.min_samples = threshold, min_samples
        self.outcomes: dict[tuple[int, int], list[int]] = {}  # class -> [read again, seen]
        self.admitted = self.refused = 0

    def classify(self, node: TreeNode) -> tuple[int, int]:
        """(0 root child / 1 parent never read again / 2 parent read again, start bucket)."""
        parent = node.parent
        reused = 0 if parent is None or parent.parent is None else (2 if parent.hits else 1)
        start = (node.depth - len(node.key)) // self.page_size
        return reused, min(_MAX_BUCKET, start.bit_length())

    def note_insert(self, node: TreeNode) -> None:
        node.admit_class = self.classify(node)

    def admit(self, node: TreeNode) -> bool:
        """Whether `node` is worth a remote write now."""
        ok = node.hits > 0 or self._likely(node)
        if ok:
            self.admitted += 1
        else:
            self.refused += 1
        return ok

    def _likely(self, node: TreeNode) -> bool:
        cls = node.admit_class if node.admit_class is not None else self.classify(node)
        read, seen = self.outcomes.get(cls, (0, 0))
        return seen < self.min_samples or read >= self.threshold * seen

    def observe(self, node: TreeNode) -> None:
        """`node` leaves the host tier: learn whether its class is read again."""
        cls = node.admit_class if node.admit_class is not None else self.classify(node)
        counts = self.outcomes.setdefault(cls, [0, 0])
        counts[0] += node.hits > 0
        counts[1] += 1

    def as_dict(self) -> dict:
        return {
            "threshold": self.threshold,
            "admitted": self.admitted,
            "refused": self.refused,
            "classes": {
                f"{'root' if r == 0 else 'reused' if r == 2 else 'fresh'}-parent/start<2^{b}": {
                    "read_again": read,
                    "seen": seen,
                }
                for (r, b), (read, seen) in sorted(self.outcomes.items())
            },
        }
