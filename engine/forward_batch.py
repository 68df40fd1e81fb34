"""What one forward pass computes: new tokens of several sequences over their cached prefixes.

Per sequence i (in order), tokens [prefix_len_i, prefix_len_i + extend_len_i) are computed; the
KV of [0, prefix_len_i) is already in device pages `page_tables[i]`, which also hold the slots
the new tokens' KV is written to. A decode step is a batch whose extend_len is 1 everywhere.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import torch


def to_device(values: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array on `device`. To a GPU through pinned memory, queued on the current stream:
    a plain copy would wait for every kernel queued before it, and the overlapped engine builds
    the next batch while the GPU still runs the last one. (The caching host allocator keeps the
    pinned block until its copy has run.)"""
    t = torch.from_numpy(values)
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


@dataclass
class ForwardBatch:
    input_ids: torch.Tensor  # [T] new tokens of all sequences, concatenated
    positions: torch.Tensor  # [T]
    prefix_lens: list[int]
    extend_lens: list[int]
    page_tables: list[list[int]]  # device pages covering [0, prefix_len + extend_len) per sequence
    page_size: int
    out_pages: torch.Tensor = field(init=False)  # [T] page of each new token's KV slot
    out_offsets: torch.Tensor = field(init=False)  # [T] offset inside that page
    last_indices: torch.Tensor = field(init=False)  # [num sequences] each one's last new token
    layer_ready: list | None = None  # a CUDA event per layer: its loaded host pages have arrived
    # per sequence: (SamplingParams, generator) to sample its next token, None for a prefill
    # chunk that samples nothing; None for the whole batch: nothing samples
    sampling: list | None = None

    def __post_init__(self) -> None:
        ps = self.page_size
        segments = []  # per sequence: the pages its new tokens write, table[first : last + 1]
        for prefix, ext, table in zip(
            self.prefix_lens, self.extend_lens, self.page_tables, strict=True
        ):
            if len(table) * ps < prefix + ext:
                raise ValueError(f"{len(table)} pages cannot hold {prefix + ext} tokens")
            segments.append(table[prefix // ps : (prefix + ext - 1) // ps + 1])
        # each new token's position and the page slot it writes, vectorised (no loop per token):
        # token j of sequence i sits at position prefix_i + j, in page table_i[pos // ps]
        ext = np.asarray(self.extend_lens, dtype=np.int64)
        starts = np.cumsum(ext) - ext  # [num sequences] first token's index in [0, T)
        seq = np.repeat(np.arange(len(ext)), ext)  # [T] each token's sequence
        prefix = np.asarray(self.prefix_lens, dtype=np.int64)
        pos = prefix[seq] + np.arange(len(seq)) - starts[seq]
        lens = np.fromiter(map(len, segments), np.int64, len(segments))
        flat = np.fromiter(itertools.chain.from_iterable(segments), np.int64, lens.sum())
        # the segment of sequence i starts at seg_starts[i] in `flat` and at page prefix_i // ps
        seg_starts = np.cumsum(lens) - lens - prefix // ps
        dev = self.input_ids.device
        # built with the batch, before the forward: no host-device copy inside the model
        self.out_pages = to_device(flat[seg_starts[seq] + pos // ps], dev)
        self.out_offsets = to_device(pos % ps, dev)
        self.last_indices = to_device(starts + ext - 1, dev)

    @classmethod
    def build(
        cls,
        sequences: list[tuple[list[int], int, list[int]]],
        page_size: int,
        device: torch.device | str = "cpu",
        sampling: list | None = None,
    ) -> ForwardBatch:
        """From (new tokens, prefix_len, page_table) per sequence, and what each samples."""
        ids, pos = [], []
        for new, prefix, _ in sequences:
            ids += new
            pos += range(prefix, prefix + len(new))
        device = torch.device(device)
        return cls(
            input_ids=to_device(np.asarray(ids, dtype=np.int64), device),
            positions=to_device(np.asarray(pos, dtype=np.int64), device),
            prefix_lens=[s[1] for s in sequences],
            extend_lens=[len(s[0]) for s in sequences],
            page_tables=[s[2] for s in sequences],
            page_size=page_size,
            sampling=sampling,
        )

    @property
    def num_sequences(self) -> int:
        return len(self.extend_lens)

    def last_token_indices(self) -> torch.Tensor:
        """Index in [0, T) of each sequence's last new token (whose logits pick the next token)."""
        return self.last_indices
