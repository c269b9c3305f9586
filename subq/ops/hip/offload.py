"""KV-cache offloading for HiP decoding: keys and values in host memory, the blocks a step needs on
the device.

:class:`OffloadedKVCache` keeps the whole cache ``[B, T, H_kv, D]`` in host memory (pinned when the
device is CUDA) and on the device only

- the ``sink_size`` first tokens and the ``recent`` last tokens (the window of every step between two
  mask refreshes must fit in them),
- a pool of ``capacity`` key blocks (``block_size_k`` tokens of one KV head, keys and values) with a
  page table over every block of the cache (the paper's "vector map") and least-recently-used
  eviction.

A decode step takes a block mask (``indices [B, H, 1, G]``, ``counts [B, H, 1]``, from a search done
elsewhere), fetches the selected blocks that miss the pool from host memory (one gather into a pinned
staging buffer, one host-to-device copy), builds the compact key list ``sinks | union of the
selected blocks of each KV head | window`` on the device and runs
:func:`~subq.ops.hip.hip_decode_attention` on it with the indices renumbered. The keys keep their
order, so the result is the decode over the full cache (bitwise with the same kernel). The mask
search itself is not offloaded: it reads the keys where the caller keeps them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from subq.ops.hip.decode import hip_decode_attention


class OffloadedKVCache:
    """A decode KV cache in host memory with a device-resident LRU cache of key blocks.

    Args:
        k, v: `[B, T, H_kv, D]`, the prefilled cache (any device; copied to host memory).
        device: where attention runs. max_len: tokens the host buffers hold (default ``T``; more
            for :meth:`append`).
        block_size_k: key block of the mask (2); sink_size: sink tokens (16), a multiple of it.
        recent: last tokens kept on the device (default 512); every ``window`` passed to
            :meth:`decode` must be at most this.
        capacity: key blocks (of one KV head) the device pool holds (default 4096); a step needs the
            union of its query heads' selected blocks for every ``(batch, KV head)`` at once.
        pin: pin the host buffers (default: when ``device`` is CUDA).

    Counters: ``hits`` and ``misses`` (blocks, over all steps), ``fetched_bytes``.
    """

    def __init__(
        self,
        k: Tensor,
        v: Tensor,
        *,
        device: torch.device | str,
        max_len: int | None = None,
        block_size_k: int = 2,
        sink_size: int = 16,
        recent: int = 512,
        capacity: int = 4096,
        pin: bool | None = None,
    ) -> None:
        if k.dim() != 4 or k.shape != v.shape:
            raise ValueError(
                f"k and v must be [B, T, H_kv, D] of one shape, got {tuple(k.shape)}, {tuple(v.shape)}"
            )
        if sink_size % block_size_k:
            raise ValueError(f"sink_size={sink_size} must be a multiple of block_size_k={block_size_k}")
        for name, val in (("recent", recent), ("capacity", capacity), ("block_size_k", block_size_k)):
            if val < 1:
                raise ValueError(f"{name} must be >= 1, got {val}")
        B, T, Hkv, D = k.shape
        max_len = T if max_len is None else max_len
        if max_len < T:
            raise ValueError(f"max_len={max_len} is shorter than the cache T={T}")
        self.device = torch.device(device)
        pin = self.device.type == "cuda" if pin is None else pin
        self.block_size_k, self.sink_size, self.recent, self.capacity = (
            block_size_k,
            sink_size,
            recent,
            capacity,
        )
        self.length = T

        def host(shape):
            return torch.empty(shape, dtype=k.dtype, pin_memory=pin)

        self.k_host, self.v_host = host((B, max_len, Hkv, D)), host((B, max_len, Hkv, D))
        self.k_host[:, :T].copy_(k)
        self.v_host[:, :T].copy_(v)
        self._staging = (host((capacity * block_size_k, D)), host((capacity * block_size_k, D)))
        dev = dict(device=self.device, dtype=k.dtype)
        self.k_sink, self.v_sink = (x[:, :sink_size].to(**dev) for x in (k, v))
        self.k_recent, self.v_recent = (x[:, max(T - recent, 0) :].to(**dev) for x in (k, v))
        self.k_pool = torch.zeros(capacity + 1, block_size_k, D, **dev)  # the last slot stays zero
        self.v_pool = torch.zeros(capacity + 1, block_size_k, D, **dev)
        self._n_blocks = -(-max_len // block_size_k)
        self.page_table = torch.full((B * Hkv * self._n_blocks,), -1, dtype=torch.long)
        self.owner = torch.full((capacity,), -1, dtype=torch.long)
        self.last_used = torch.full((capacity,), -1, dtype=torch.long)
        self._copied = torch.cuda.Event() if self.device.type == "cuda" else None  # staging reusable
        self.step = 0
        self.hits = self.misses = self.fetched_bytes = 0

    def device_bytes(self) -> int:
        """Bytes of K and V this cache holds on the device (sinks, recent tokens, block pool)."""
        parts = (self.k_sink, self.v_sink, self.k_recent, self.v_recent, self.k_pool, self.v_pool)
        return sum(x.numel() * x.element_size() for x in parts)

    def clear(self) -> None:
        """Empty the block pool (the next step misses every block); counters are kept."""
        self.page_table.fill_(-1)
        self.owner.fill_(-1)
        self.last_used.fill_(-1)

    def append(self, k_t: Tensor, v_t: Tensor) -> None:
        """Add one token, ``k_t, v_t: [B, 1, H_kv, D]``, to the host cache and the recent tokens."""
        if self.length >= self.k_host.shape[1]:
            raise ValueError(f"the cache is full: max_len={self.k_host.shape[1]}")
        self.k_host[:, self.length].copy_(k_t[:, 0])
        self.v_host[:, self.length].copy_(v_t[:, 0])
        self.k_recent = torch.cat((self.k_recent, k_t.to(self.k_recent)), 1)[:, -self.recent :]
        self.v_recent = torch.cat((self.v_recent, v_t.to(self.v_recent)), 1)[:, -self.recent :]
        self.length += 1

    def decode(
        self,
        q: Tensor,
        indices: Tensor,
        counts: Tensor,
        *,
        window: int = 256,
        scale: float | None = None,
        num_splits: int | None = None,
        mode: str = "auto",
    ) -> Tensor:
        """:func:`~subq.ops.hip.hip_decode_attention` of ``q: [B, 1, H, D]`` (the token at position
        ``length - 1``) over the whole cache, with ``indices [B, H, 1, G]``, ``counts [B, H, 1]`` and
        the effective ``window``; returns ``o: [B, 1, H, D]``."""
        T, bk, S = self.length, self.block_size_k, self.sink_size
        B, _, H, D = q.shape
        Hkv = self.k_host.shape[2]
        if window > min(self.recent, T - S):
            raise ValueError(
                f"window={window} must be at most recent={self.recent} and length - sink_size={T - S}"
            )
        union, blocks = self._union(indices, counts, H // Hkv)  # [B, H_kv, U], [B, H, G]
        chosen = blocks[blocks >= 0]
        if chosen.numel() and (int(chosen.max()) * bk + bk > T - window or int(chosen.min()) * bk < S):
            raise ValueError(
                f"selected blocks must lie between the {S} sinks and the window of the last {window} tokens"
            )
        slots = self._fetch(union)  # [B, H_kv, U] pool slots (the zero slot for padding)
        U = union.shape[-1]

        def compact(sink, pool, recent):
            sel = pool[slots].permute(0, 2, 3, 1, 4).reshape(B, U * bk, Hkv, D)
            return torch.cat((sink, sel, recent[:, recent.shape[1] - window :]), 1)

        k_c = compact(self.k_sink, self.k_pool, self.k_recent)  # [B, S + U bk + window, H_kv, D]
        v_c = compact(self.v_sink, self.v_pool, self.v_recent)
        # block b of query head h -> S / bk + its rank in the union of h's KV head (order kept)
        per_head = union.repeat_interleave(H // Hkv, 1)  # [B, H, U]
        renum = torch.searchsorted(per_head, blocks.clamp(min=0)) + S // bk
        renum = torch.where(blocks >= 0, renum, -1).to(torch.int32)[:, :, None]  # [B, H, 1, G]
        o, _ = hip_decode_attention(
            q, k_c, v_c, renum.to(self.device), counts, block_size_k=bk, sink_size=S, window=window,
            scale=scale, num_splits=num_splits, mode=mode,
        )  # fmt: skip
        return o

    def _union(self, indices: Tensor, counts: Tensor, group: int) -> tuple[Tensor, Tensor]:
        """Selected blocks per query head ``[B, H, G]`` (-1 unused) and their sorted union per
        ``(batch, KV head)``, ``[B, H_kv, U]`` padded with a sentinel larger than every block."""
        idx, cnt = indices.detach().cpu().long()[:, :, 0], counts.detach().cpu().long()[:, :, 0]
        B, H, G = idx.shape
        blocks = torch.where(torch.arange(G) < cnt[..., None], idx, -1)
        pad = self._n_blocks
        rows = torch.where(blocks >= 0, blocks, pad).view(B, H // group, group * G).sort(-1).values
        dup = torch.zeros_like(rows, dtype=torch.bool)
        dup[..., 1:] = rows[..., 1:] == rows[..., :-1]
        rows = rows.masked_fill(dup, pad).sort(-1).values
        U = max(int((rows < pad).sum(-1).max()), 1)
        return rows[..., :U].contiguous(), blocks

    def _fetch(self, union: Tensor) -> Tensor:
        """Pool slots of the union's blocks, fetching the misses from host memory (LRU eviction)."""
        B, Hkv, U = union.shape
        valid = union < self._n_blocks
        heads = torch.arange(B * Hkv).view(B, Hkv, 1)
        page = (heads * self._n_blocks + union.clamp(max=self._n_blocks - 1))[valid]
        needed = page.numel()
        if needed > self.capacity:
            raise ValueError(f"a step needs {needed} blocks but the pool holds capacity={self.capacity}")
        self.step += 1
        slot = self.page_table[page]
        hit = slot >= 0
        self.last_used[slot[hit]] = self.step
        miss = page[~hit]
        n_miss = miss.numel()
        self.hits += needed - n_miss
        self.misses += n_miss
        if n_miss:
            victims = torch.argsort(self.last_used, stable=True)[:n_miss]  # free slots (-1) first
            evicted = self.owner[victims]
            self.page_table[evicted[evicted >= 0]] = -1
            self.page_table[miss] = victims
            self.owner[victims] = miss
            self.last_used[victims] = self.step
            self._copy_in(miss, victims)
            slot = self.page_table[page]
        slots = torch.full((B, Hkv, U), self.capacity, dtype=torch.long)  # padding -> the zero slot
        slots[valid] = slot
        return slots.to(self.device)

    def _copy_in(self, pages: Tensor, victims: Tensor) -> None:
        """Gather the ``pages`` from host memory into the staging buffers, then copy to the pool."""
        bk, n = self.block_size_k, pages.numel()
        B, T_max, Hkv, D = self.k_host.shape
        head, blk = pages // self._n_blocks, pages % self._n_blocks
        b, h = head // Hkv, head % Hkv
        tok = (blk[:, None] * bk + torch.arange(bk)).clamp(max=T_max - 1)  # [n, bk]
        rows = ((b[:, None] * T_max + tok) * Hkv + h[:, None]).flatten()
        dst = victims.to(self.device)
        if self._copied is not None:
            self._copied.synchronize()  # the previous step's copies out of the staging buffers are done
        for host, staging, pool in (
            (self.k_host, self._staging[0], self.k_pool),
            (self.v_host, self._staging[1], self.v_pool),
        ):
            buf = staging[: n * bk]
            torch.index_select(host.view(-1, D), 0, rows, out=buf)
            pool[dst] = buf.view(n, bk, D).to(self.device, non_blocking=True)
        if self._copied is not None:
            self._copied.record()
        self.fetched_bytes += 2 * n * bk * D * self.k_host.element_size()
