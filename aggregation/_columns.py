"""Coordinate-wise order statistics without sorting along the long axis, for a batch
of stacks (B, n, d) at once (a peer's one stack is B = 1).

`torch.median(dim=0)` and `sort(dim=0)` on an (n, d) stack cost ~0.5 s at n = 32,
d = 1M. Here the columns are cut into cache-sized blocks and each block is put in
order by a sorting network: every comparator is one vectorized min and one max over
two whole rows of the block (row i of several batch entries at once when d is short),
branch-free elementwise math that stays in cache.

The network is Batcher's odd-even merge sort for the next power of two, cut down to
n rows (every comparator puts the smaller value at the lower index, so one that
touches a row >= n would only compare with a +inf pad and is dropped), and then to
the comparators that can reach the ranks the caller reads: the median of 9 rows
takes 24 comparators, not the 160 row operations of a padded 16-row bitonic network.

A trimmed mean needs no order at all, only the set of middle values: `trimming_network`
takes f maxima and minima off (22 row operations for f = 1 of 9 rows, against 54 for the
middle ranks in order) and the kept values are summed untouched.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import numpy as np
import torch

BLOCK_ELEMENTS = 1 << 19  # elements per block: (n + 1 rows) x (columns) ~ 2 MB of float32
MIN_COLUMNS = 1 << 14  # below this, per-call overhead outweighs the cache


@functools.cache
def _batcher(p: int) -> tuple[tuple[int, int], ...]:
    """Comparators (i < j) of Batcher's odd-even merge sort for p = 2^k inputs."""
    pairs: list[tuple[int, int]] = []

    def merge(lo: int, n: int, r: int) -> None:
        step = 2 * r
        if step < n:
            merge(lo, n, step)
            merge(lo + r, n, step)
            pairs.extend((i, i + r) for i in range(lo + r, lo + n - r, step))
        else:
            pairs.append((lo, lo + r))

    def sort(lo: int, n: int) -> None:
        if n > 1:
            sort(lo, n // 2)
            sort(lo + n // 2, n // 2)
            merge(lo, n, 1)

    sort(0, p)
    return tuple(pairs)


def _prune_to_ranks(pairs: list[tuple[int, int]], lo: int, hi: int) -> list[tuple[int, int]]:
    """The comparators whose results reach one of the ranks lo..hi-1 (in order)."""
    needed, kept = set(range(lo, hi)), []
    for i, j in reversed(pairs):
        if i in needed or j in needed:
            kept.append((i, j))
            needed |= {i, j}
    kept.reverse()
    return kept


def _prune_to_set(pairs: list[tuple[int, int]], wires: set[int]) -> list[tuple[int, int]]:
    """The comparators needed for `wires` to hold the right values as a set, in any order.

    Walking back from the end, keep groups of wires whose multiset of values must be right
    (first: `wires`). A comparator inside one group only permutes it: dropped. One that
    touches a group is kept, and its two inputs then form a group of their own (min and max
    depend on their pair of values, not on their order), leaving the rest of each group.
    """
    groups: list[set[int]] = [set(wires)]
    kept = []
    for i, j in reversed(pairs):
        gi = next((g for g in groups if i in g), None)
        gj = next((g for g in groups if j in g), None)
        if gi is gj:  # both in one group (dropped: a permutation of it) or in none (unread)
            continue
        kept.append((i, j))
        for g in (gi, gj):
            if g is not None:
                g -= {i, j}
        groups = [g for g in groups if g] + [{i, j}]
    kept.reverse()
    return kept


def _extremes(n: int, f: int) -> tuple[list[tuple[int, int]], set[int]]:
    """A selection network for a trimmed mean: f rounds, each taking the largest and the
    smallest value off the wires left. Comparators are (min wire, max wire).

    A round over m wires compares them in pairs (an odd one out against the first pair's
    min, so that it joins both candidate groups' reach), then carries the max along the
    pairs' maxes and the min along their mins: about 3m/2 compare-exchanges where the two
    separate chains take 2m - 3 and a sort's share of the pruned Batcher network more.
    Returns the comparators and the wires left holding the n - 2f middle values.
    """
    pairs: list[tuple[int, int]] = []
    left = list(range(n))
    for _ in range(f):
        lows, highs = left[0:-1:2], left[1::2]
        pairs += list(zip(lows, highs, strict=False))
        if len(left) % 2:
            pairs.append((lows[0], left[-1]))  # the odd one: min stays a low, max joins the highs
            highs = highs + [left[-1]]
        for a, b in zip(highs, highs[1:], strict=False):  # the max walks to the last high
            pairs.append((a, b))
        for a, b in zip(lows, lows[1:], strict=False):  # the min walks to the last low
            pairs.append((b, a))
        drop = {highs[-1], lows[-1]}
        left = [w for w in left if w not in drop]
    return pairs, set(left)


def _program(n: int, pairs: list[tuple[int, int]], wires: list[int]
             ) -> tuple[tuple[tuple[int, int, int, int], ...], tuple[int, ...]]:
    """Lay comparators (min wire, max wire) out on rows: the n inputs are only read, the
    n + 1 scratch rows written; returns the live steps and the rows `wires` end on."""
    where, free, steps = list(range(n)), list(range(2 * n, n - 1, -1)), []
    for i, j in pairs:
        a, b = where[i], where[j]
        low = free.pop()
        high = b if b >= n else a if a >= n else free.pop()  # max in place over a scratch input
        if a >= n and high != a:
            free.append(a)
        steps.append((a, b, low, high))
        where[i], where[j] = low, high
    rows = tuple(where[k] for k in wires)
    return _live(steps, rows), rows


def _batcher_pairs(n: int) -> list[tuple[int, int]]:
    """Batcher's network for the next power of two, cut down to n rows (every comparator puts
    the smaller value at the lower index, so one touching a row >= n would face a +inf pad)."""
    p = 1 << max(0, (n - 1).bit_length())
    return [(i, j) for i, j in _batcher(p) if j < n]


@functools.lru_cache(maxsize=256)
def network(n: int, lo: int, hi: int) -> tuple[tuple[tuple[int, int, int, int], ...], tuple[int, ...]]:
    """The program that leaves ranks lo..hi-1 of n rows in order, reading the input rows
    in place (never writing them) and writing only n + 1 scratch rows.

    Rows are numbered 0..n-1 for the inputs and n..2n for scratch. Each step (a, b, lo, hi)
    writes min(row a, row b) to row lo (a free scratch row) and max to row hi (b or a when
    that is scratch, else another free row), either skipped where it is -1 (never read);
    `rows` lists where ranks lo..hi-1 end up.
    """
    return _program(n, _prune_to_ranks(_batcher_pairs(n), lo, hi), list(range(lo, hi)))


def _cost(program: tuple[tuple[tuple[int, int, int, int], ...], tuple[int, ...]]) -> int:
    """Row operations (ufunc calls) a program makes."""
    return sum((low >= 0) + (high >= 0) for _, _, low, high in program[0])


@functools.lru_cache(maxsize=256)
def trimming_network(n: int, f: int) -> tuple[tuple[tuple[int, int, int, int], ...], tuple[int, ...]]:
    """A program (as `network`'s) whose `rows` hold the n - 2f middle values of each column
    as a set, in no particular order: what a trimmed mean sums. The cheaper of the extremes
    rounds and Batcher's network pruned to that set (better when f is near n / 2)."""
    if f < 0 or n - 2 * f < 1:
        raise ValueError(f"trimming {f} of each side of {n} rows")
    middle = list(range(f, n - f))
    rounds, left = _extremes(n, f)
    candidates = [_program(n, rounds, sorted(left)),
                  _program(n, _prune_to_set(_batcher_pairs(n), set(middle)), middle)]
    return min(candidates, key=_cost)


def _live(steps: list[tuple[int, int, int, int]], rows: tuple[int, ...]) -> tuple[tuple[int, int, int, int], ...]:
    """The steps with each output that nothing reads later replaced by -1 (not computed): near
    the end of a selection network, a comparator often feeds only its min or only its max."""
    needed, out = set(rows), []
    for a, b, low, high in reversed(steps):
        low, high = (low if low in needed else -1), (high if high in needed else -1)
        needed -= {low, high}
        if low >= 0 or high >= 0:
            needed |= {a, b}
            out.append((a, b, low, high))
    return tuple(reversed(out))


def _block_shape(batch: int, d: int, n: int) -> tuple[int, int]:
    """(batch entries, columns) per block: a block of about BLOCK_ELEMENTS per row set,
    whole rows of several batch entries when d is short, part of one entry's row when long."""
    cols = max(MIN_COLUMNS, BLOCK_ELEMENTS // (n + 1))
    if d >= cols:
        return 1, cols
    return min(batch, max(1, cols // d)), d


def _network_blocks(stack: torch.Tensor, steps: tuple[tuple[int, int, int, int], ...], scratch_rows: int,
                    mix: torch.Tensor | None) -> Iterator[tuple[slice, slice, list[np.ndarray]]]:
    """Run a program (`network`'s steps) over every block of `stack` (B, n, d), or of
    `mix @ stack` when a pre-step's (B, m, n) mixing matrices are given (mixed per block, so
    the mixed stack never exists whole). Yield (batch slice, column slice, rows): the block's
    numpy rows, inputs then scratch, each (b, C); they are reused for the next block."""
    batch, n, d = stack.shape if mix is None else (stack.shape[0], mix.shape[1], stack.shape[2])
    bb, cols = _block_shape(batch, d, n)
    # the mixing matrices and the scratch that holds one block of mixed rows
    mixing = None if mix is None else (mix, torch.empty(bb, n, cols, dtype=stack.dtype))
    # numpy views of the same memory: numpy's ufuncs cost less per call than torch ops
    source = stack.detach().numpy() if mixing is None else mixing[1].numpy()
    # a block's input rows, copied contiguous: a ufunc over two rows strided across batch
    # entries costs three times one over contiguous rows, and each input row is read twice
    inputs_np = np.empty((n, bb, cols), dtype=source.dtype) if bb > 1 else None
    scratch_np = np.empty((scratch_rows, bb, cols), dtype=source.dtype)
    for b0 in range(0, batch, bb):
        b = min(bb, batch - b0)
        for start in range(0, d, cols):
            c = min(cols, d - start)
            if mixing is None:
                inputs = source[b0 : b0 + b, :, start : start + c].swapaxes(0, 1)
            else:
                m, mixed = mixing
                if b == bb and c == cols:
                    torch.bmm(m[b0 : b0 + b], stack[b0 : b0 + b, :, start : start + c], out=mixed)
                else:  # the ragged last block: a strided out= would be copied through a temporary
                    mixed[:b, :, :c] = torch.bmm(m[b0 : b0 + b], stack[b0 : b0 + b, :, start : start + c])
                inputs = source[:b, :, :c].swapaxes(0, 1)
            if inputs_np is not None:
                np.copyto(inputs_np[:, :b, :c], inputs)
                inputs = inputs_np[:, :b, :c]
            r = list(inputs) + list(scratch_np[:, :b, :c])
            for a, bi, low, high in steps:
                if low >= 0:
                    np.minimum(r[a], r[bi], out=r[low])
                if high >= 0:
                    np.maximum(r[a], r[bi], out=r[high])
            yield slice(b0, b0 + b), slice(start, start + c), r


def ranked_blocks(stack: torch.Tensor, lo: int = 0, hi: int | None = None,
                  mix: torch.Tensor | None = None) -> Iterator[tuple[slice, slice, torch.Tensor]]:
    """Yield (batch slice, column slice, block): block[k] (a (b, C) tensor) holds rank lo + k
    of each column of `stack` (B, n, d), per batch entry, or of `mix @ stack` when a pre-step's
    (B, m, n) mixing matrices are given. The block is scratch reused for the next one: consume
    it before advancing. `stack` is only read."""
    batch, n, d = stack.shape if mix is None else (stack.shape[0], mix.shape[1], stack.shape[2])
    hi = n if hi is None else hi
    if not 0 <= lo < hi <= n:
        raise ValueError(f"ranks {lo}..{hi - 1} of {n} rows")
    steps, rows = network(n, lo, hi)
    bb, cols = _block_shape(batch, d, n)
    ranked = torch.empty(hi - lo, bb, cols, dtype=stack.dtype)
    ranked_np = ranked.numpy()
    for batches, columns, r in _network_blocks(stack, steps, n + 1, mix):
        b, c = r[0].shape
        for k, row in enumerate(rows):
            ranked_np[k, :b, :c] = r[row]
        yield batches, columns, ranked[:, :b, :c]


def trimmed_mean_columns(stack: torch.Tensor, f: int, mix: torch.Tensor | None = None) -> torch.Tensor:
    """(B, d): per column of each batch entry of `stack` (B, n, d), or of `mix @ stack`, the
    mean of the values left once the f largest and the f smallest are removed.

    A selection network moves the kept values to n - 2f rows untouched, which are then summed:
    never sum - max - min, where a Byzantine 1e30 would absorb every honest value in float32.
    """
    batch, n, d = stack.shape if mix is None else (stack.shape[0], mix.shape[1], stack.shape[2])
    steps, rows = trimming_network(n, f)
    out = torch.empty(batch, d, dtype=stack.dtype)
    out_np = out.numpy()
    for batches, columns, r in _network_blocks(stack, steps, n + 1, mix):
        acc = out_np[batches, columns]
        if len(rows) == 1:
            np.copyto(acc, r[rows[0]])
        else:
            np.add(r[rows[0]], r[rows[1]], out=acc)
            for row in rows[2:]:
                np.add(acc, r[row], out=acc)
    return out.div_(len(rows))


def reduce_sorted(stack: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor],
                  lo: int = 0, hi: int | None = None, mix: torch.Tensor | None = None) -> torch.Tensor:
    """Apply `fn` (ranks lo..hi-1 of a block, (hi - lo, b, C) -> (b, C)) to every block and
    assemble the (B, d) result."""
    out = torch.empty(stack.shape[0], stack.shape[2], dtype=stack.dtype)
    for batches, cols, block in ranked_blocks(stack, lo, hi, mix):
        out[batches, cols] = fn(block)
    return out
