"""BlockManager: paged KV-cache bookkeeping with prefix caching shared across requests.

The KV cache is split into fixed-size blocks; a sequence's `block_table` maps its positions onto
them (position p lives in block `block_table[p // block_size]` at offset `p % block_size`).
A full, computed block is registered under a hash of its tokens chained with its parent's, so a
later prompt with the same prefix reuses the block instead of recomputing it. Nothing here touches
tensors: the model runner writes the KV, this file only decides where.

Hashes are a fast index, not a proof. Every block also carries a `prefix_id`, a number minted once
per distinct token prefix and never reused, and records its parent's. A hit must match the tokens
and the parent's id; by induction the whole prefix is then equal, so a hash collision can only cost
a cache miss, never a wrong answer. (Comparing this block's tokens alone is not enough: two
different prefixes can end in the same 16 tokens.)
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from itertools import count

from openqwen.engine.sequence import Sequence


def hash_block(parent_hash: int | None, token_ids: tuple[int, ...]) -> int:
    """Chained block hash. Python's tuple hash is fast and deterministic for ints; collisions are
    harmless because hits are verified (module-level so tests can force collisions)."""
    return hash((parent_hash, token_ids))


@dataclass(slots=True)
class Block:
    block_id: int
    ref_count: int = 0
    hash: int | None = None  # set once the block is full, computed and registered
    token_ids: tuple[int, ...] = ()
    prefix_id: int | None = None  # identity of the exact token prefix ending in this block
    parent_prefix_id: int | None = None


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int = 16, enable_prefix_caching: bool = True) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be positive")
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        # Free blocks, oldest first. Freed blocks keep their hash and stay findable until a fresh
        # allocation takes them from the front, so the least recently freed prefix goes first.
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._cached: dict[int, int] = {}  # hash -> block id
        self._prefix_ids = count()
        self.prefix_cache_queries = 0  # tokens looked up at allocation
        self.prefix_cache_hits = 0  # of those, tokens the cache supplied

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_blocks

    def _blocks_for(self, num_positions: int) -> int:
        return -(-num_positions // self.block_size)

    def _lookup(self, h: int, token_ids: tuple[int, ...], parent_prefix_id: int | None) -> Block | None:
        block_id = self._cached.get(h)
        if block_id is None:
            return None
        block = self.blocks[block_id]
        if block.token_ids != token_ids or block.parent_prefix_id != parent_prefix_id:
            return None  # a collision: treat as a miss
        return block

    def _match(self, seq: Sequence) -> list[Block]:
        """Cached blocks holding a prefix of `seq`. Only blocks inside the first num_tokens - 1
        tokens count: the model must run on at least the last token to produce logits."""
        if not self.enable_prefix_caching:
            return []
        matched: list[Block] = []
        h: int | None = None
        for i in range((seq.num_tokens - 1) // self.block_size):
            token_ids = tuple(seq.token_ids[i * self.block_size : (i + 1) * self.block_size])
            h = hash_block(h, token_ids)
            block = self._lookup(h, token_ids, matched[-1].prefix_id if matched else None)
            if block is None:
                break
            matched.append(block)
        return matched

    def cached_prefix_len(self, seq: Sequence) -> int:
        """Tokens of `seq` the prefix cache could supply right now (a multiple of block_size,
        always < num_tokens). Pure; the scheduler uses it to size the first chunk."""
        return len(self._match(seq)) * self.block_size

    def can_allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Whether `allocate(seq, num_new_tokens)` would succeed: matched blocks sitting in the free
        list must be revived, and fresh blocks must cover the chunk after the cached prefix."""
        matched = self._match(seq)
        revived = sum(block.ref_count == 0 for block in matched)
        fresh = self._blocks_for(len(matched) * self.block_size + num_new_tokens) - len(matched)
        return revived + fresh <= self.num_free_blocks

    def allocate(self, seq: Sequence, num_new_tokens: int) -> None:
        """Give a WAITING seq its cached prefix plus room for its first `num_new_tokens` tokens.
        One call rather than allocate + may_append, so it cannot fail halfway after can_allocate."""
        assert not seq.block_table, "allocate() needs a sequence without blocks"
        matched = self._match(seq)
        num_cached = len(matched) * self.block_size
        assert num_cached + num_new_tokens <= seq.num_tokens
        for block in matched:
            if block.ref_count == 0:
                del self._free[block.block_id]  # revive a freed block that still holds its prefix
            block.ref_count += 1
            seq.block_table.append(block.block_id)
        seq.num_cached_tokens = seq.num_computed_tokens = num_cached
        if self.enable_prefix_caching:
            self.prefix_cache_queries += seq.num_tokens
            self.prefix_cache_hits += num_cached
        self.may_append(seq, num_new_tokens)

    def can_append(self, seq: Sequence, num_new_tokens: int) -> bool:
        needed = self._blocks_for(seq.num_computed_tokens + num_new_tokens) - len(seq.block_table)
        return needed <= self.num_free_blocks

    def may_append(self, seq: Sequence, num_new_tokens: int) -> None:
        """Grow the block table to cover `num_computed_tokens + num_new_tokens` positions."""
        needed = self._blocks_for(seq.num_computed_tokens + num_new_tokens) - len(seq.block_table)
        for _ in range(needed):
            seq.block_table.append(self._take_fresh_block())

    def _take_fresh_block(self) -> int:
        if not self._free:
            raise RuntimeError("out of KV cache blocks; check can_allocate/can_append first")
        block_id, _ = self._free.popitem(last=False)
        block = self.blocks[block_id]
        if block.hash is not None and self._cached.get(block.hash) == block_id:
            del self._cached[block.hash]  # evict: the block is about to hold other tokens
        block.hash, block.token_ids, block.prefix_id, block.parent_prefix_id = None, (), None, None
        block.ref_count = 1
        return block_id

    def mark_computed(self, seq: Sequence, num_new_tokens: int) -> None:
        """Record that the model wrote KV for `num_new_tokens` more positions, and register every
        block that became full, so later requests can hit it."""
        first = seq.num_computed_tokens // self.block_size
        seq.num_computed_tokens += num_new_tokens
        assert seq.num_computed_tokens <= min(seq.num_tokens, len(seq.block_table) * self.block_size)
        if not self.enable_prefix_caching:
            return
        for i in range(first, seq.num_computed_tokens // self.block_size):
            parent = self.blocks[seq.block_table[i - 1]] if i else None
            token_ids = tuple(seq.token_ids[i * self.block_size : (i + 1) * self.block_size])
            self._register(self.blocks[seq.block_table[i]], parent, token_ids)

    def _register(self, block: Block, parent: Block | None, token_ids: tuple[int, ...]) -> None:
        parent_prefix_id = parent.prefix_id if parent else None
        h = hash_block(parent.hash if parent else None, token_ids)
        twin = self._lookup(h, token_ids, parent_prefix_id)
        block.hash, block.token_ids, block.parent_prefix_id = h, token_ids, parent_prefix_id
        if twin is not None:
            # The same prefix was computed twice (two requests admitted together): share the
            # identity so children of either copy stay findable; the indexed copy stays indexed.
            block.prefix_id = twin.prefix_id
        else:
            block.prefix_id = next(self._prefix_ids)
            self._cached[h] = block.block_id  # replaces a colliding entry, if any

    def deallocate(self, seq: Sequence) -> None:
        """Release `seq`'s blocks. Tail blocks are freed first so they are evicted first: a prefix
        is useless without its head, while the head alone still serves shorter prompts."""
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self._free[block_id] = None
                if block.hash is None:
                    self._free.move_to_end(block_id, last=False)  # holds nothing reusable: reuse first
        seq.block_table.clear()
        seq.num_computed_tokens = 0
