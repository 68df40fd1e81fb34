"""One rule for every flashinfer wrapper the engine plans: a wrapper is not planned again before
its previous plan's copy to the GPU has run.

flashinfer's `plan()` writes the work split it computed (which tiles of which sequence each CTA
takes, where split-KV partial results go) into a pinned host buffer of the wrapper and copies it
to the wrapper's device buffer with an asynchronous copy on the current stream. That copy runs
when the stream reaches it, after the kernels queued before it. The engine plans step N+1 while
step N runs (overlap scheduling), and a prompt's middle prefill chunks sample nothing, so
nothing waits for the GPU between them: a second `plan()` of the same wrapper could rewrite the
pinned buffer before the first plan's copy ran, and the first step's kernels would then read the
second step's split with the first step's pages. On an H100 (2026-12-07) this is what a
conversation trace's replay hit at 2,048- and 4,096-token chunks: an illegal memory access or a
stalled step after about ten requests. With the fence the same replay ran 479 requests clean
(2026-12-08), and tests/test_gpu_attention.py holds a busy stream and checks two chunks planned
back to back against each alone.
"""

from __future__ import annotations

import torch


class PlanFence:
    """`plan(wrapper, ...)` waits for the previous plan of that wrapper to reach the GPU, then
    plans and marks the stream after the new plan's copy."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._copied: dict[int, torch.cuda.Event] = {}  # id(wrapper) -> after its latest copy

    def plan(self, wrapper, *args, **kwargs) -> None:
        key = id(wrapper)  # the wrappers live as long as the fence's owner
        previous = self._copied.get(key)
        if previous is not None:
            # the one wait of a plan (unavoidable: flashinfer rewrites the pinned buffer on the
            # host): until the previous plan's copy ran, i.e. the kernels queued before it
            previous.synchronize()
        wrapper.plan(*args, **kwargs)
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(self.device))
        self._copied[key] = done
