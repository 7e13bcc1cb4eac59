"""Which outputs depend on which inputs: Jacobian and Hessian sparsity from the graph.

Dependencies are propagated through the graph as bit sets, 64 inputs at a time (one
``uint64`` per element, bit k set when the element depends on input element k of the
current block), the way CasADi propagates sparsity.  Each node's bits are the OR of the
bits of the operand elements it reads — read off the operator table: an elementwise
entry reads one element per operand (broadcast), and not the operands whose partial is
identically zero (comparisons, ``step``, a ``where``'s condition); a structured entry
reads what its ``kind`` says.  The pattern is structural: an entry that happens to be 0
at some point (``x·0``) is kept.

The pattern then gives a *colouring*: columns (or rows) no row (column) shares may be
swept together, so a banded n×n Jacobian costs a handful of sweeps, not n.
"""
from __future__ import annotations

import networkx as nx
import numpy as np

from . import ops
from .graph import Graph, ancestors
from .ops import ELEMENTWISE, STRUCTURED, numpy_index

BITS = 64
_ONE = np.uint64(1)


def _or_reduce(bits, axes, keepdims):
    out = bits
    for axis in sorted(axes, reverse=True):
        out = np.bitwise_or.reduce(out, axis=axis, keepdims=True)
    return out if keepdims else out.reshape(
        tuple(n for i, n in enumerate(bits.shape) if i not in axes))


def _contraction(a, b):
    """matmul: out[…, i, j] reads a[…, i, :] and b[…, :, j]."""
    va, vb = a.ndim == 1, b.ndim == 1
    a = a[None, :] if va else a
    b = b[:, None] if vb else b
    out = np.bitwise_or.reduce(a, axis=-1)[..., :, None] | \
        np.bitwise_or.reduce(b, axis=-2)[..., None, :]
    if va:
        out = out[..., 0, :]
    if vb:
        out = out[..., 0]
    return out


def _structured(op, args, params, shape):
    """The bits of a structured node from its operands' (index operands: their values)."""
    entry = STRUCTURED[op]
    if entry.kind == "reduction":
        return _or_reduce(args[0], params[0], params[1])
    if entry.kind == "scan":
        return np.bitwise_or.accumulate(args[0], axis=params[0])
    if entry.kind == "contraction":
        return _contraction(args[0], args[1])
    if entry.kind == "loop":
        return _loop(args, params[0], shape)
    if entry.kind == "assemble":     # the operands' bits placed in their regions, 0 around
        out = np.zeros(shape, np.uint64)
        for spec, a in zip(entry.regions([a.shape for a in args], params), args):
            out[numpy_index(spec)] |= a
        return out
    if op == "scatter_add":
        out = np.zeros(shape, np.uint64)
        np.bitwise_or.at(out, tuple(args[1:]), args[0])
        return out
    # views and gathers move elements: the operator itself moves their bits
    return np.asarray(entry.numpy(args, params), np.uint64)


def _loop(args, body, shape):
    """A loop's row t reads every element of the inits and of what the body reads, and the
    xs of the steps up to t (from t on, backwards): conservative within a row, exact in
    which steps' xs reach it."""
    nc, nx_ = len(body.carry), len(body.xs)
    every = np.uint64(0)                 # index operands come as their values, not bits
    for k, a in enumerate(args):
        if a.dtype == np.uint64 and not nc <= k < nc + nx_:
            every |= np.bitwise_or.reduce(a, axis=None)
    steps = np.zeros(shape[0], np.uint64)
    for a in args[nc:nc + nx_]:
        if a.dtype == np.uint64:
            steps |= np.bitwise_or.reduce(a.reshape(a.shape[0], -1), axis=1)
    steps = np.bitwise_or.accumulate(steps[::-1])[::-1] if body.reverse else \
        np.bitwise_or.accumulate(steps)
    return np.broadcast_to((steps | every)[:, None], shape)


class Pattern:
    """The bit-set interpreter over one graph: ``rows(outputs, wrt, values)`` gives the
    nonzero (row, column) pairs of ∂outputs/∂wrt, flattened and stacked in order."""

    def __init__(self, g: Graph, outputs: list, wrt: list):
        self.g, self.outputs, self.wrt = g, list(outputs), list(wrt)
        self.order = sorted(ancestors(g, self.outputs))
        nodes = g.attrs
        self.float = {i for i in self.order if nodes[i]["dtype"].kind == "f"}
        self.sizes = [int(np.prod(nodes[w]["shape"])) for w in self.wrt]

    def _values(self, given: dict) -> dict:
        """Index and mask nodes' values (what gathers read), from the given inputs."""
        nodes, values = self.g.attrs, {}
        for i in self.order:
            a = nodes[i]
            if i in self.float:
                continue
            if a["op"] == "input":
                values[i] = np.broadcast_to(given[i], a["shape"])
            else:
                values[i] = ops.evaluate(a["op"], [values[k] for k in a["args"]],
                                         a["params"], a["shape"], a["dtype"])
        return values

    def _sweep(self, seeds: dict, values: dict) -> dict:
        """Bits of every float node, the wrt nodes carrying ``seeds``."""
        nodes, bits = self.g.attrs, {}
        for i in self.order:
            a = nodes[i]
            if i not in self.float:
                continue
            shape, op = a["shape"], a["op"]
            if i in seeds:
                bits[i] = seeds[i]
            elif op in ("input", "const", "array"):
                bits[i] = np.zeros(shape, np.uint64)
            elif op in ELEMENTWISE:
                flat = ELEMENTWISE[op].templates
                out = np.zeros(shape, np.uint64)
                for slot, k in enumerate(a["args"]):
                    if k in bits and flat[slot] != 0.0:
                        out |= np.broadcast_to(bits[k], shape)
                bits[i] = out
            else:
                args = [bits[k] if k in bits else values[k] for k in a["args"]]
                bits[i] = np.broadcast_to(_structured(op, args, a["params"], shape), shape)
        return bits

    def pairs(self, given: dict) -> tuple[np.ndarray, np.ndarray, tuple]:
        """(rows, columns, (m, n)): the structural nonzeros of the stacked Jacobian."""
        values = self._values(given)
        nodes = self.g.attrs
        offsets = np.concatenate([[0], np.cumsum(self.sizes)])
        n = int(offsets[-1])
        m = sum(int(np.prod(nodes[o]["shape"])) for o in self.outputs)
        rows, cols = [], []
        for start in range(0, n, BITS):
            seeds = {}
            for w, size, first in zip(self.wrt, self.sizes, offsets):
                flat = np.zeros(size, np.uint64)
                lo, hi = max(start, first), min(start + BITS, first + size)
                if lo < hi:
                    flat[lo - first:hi - first] = _ONE << np.arange(lo - start, hi - start,
                                                                   dtype=np.uint64)
                # a wrt node listed twice, or read as an output, keeps every seed bit
                seeds[w] = seeds.get(w, 0) | flat.reshape(nodes[w]["shape"])
            bits = self._sweep(seeds, values)
            row = 0
            for o in self.outputs:
                flat = np.asarray(bits.get(o, np.zeros(nodes[o]["shape"], np.uint64)),
                                  np.uint64).reshape(-1)
                hit = np.flatnonzero(flat)      # the elements with any bit, then which
                r, bit = np.nonzero((flat[hit, None] >> np.arange(BITS, dtype=np.uint64))
                                    & _ONE)
                rows.append(hit[r] + row)
                cols.append(bit + start)
                row += flat.size
        rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        cols = np.concatenate(cols) if cols else np.zeros(0, np.int64)
        order = np.lexsort((cols, rows))
        return rows[order].astype(np.int64), cols[order].astype(np.int64), (m, n)


# Past this many conflict edges, colouring costs more than the sweeps it saves.
MAX_EDGES = 5_000_000


def colouring(rows, cols, count: int) -> np.ndarray | None:
    """A colour per column (0, 1, …) such that no two columns of one colour share a row:
    a distance-2 colouring of the bipartite pattern, by networkx's greedy colouring of the
    column intersection graph.  None when that graph would be too big to be worth it."""
    counts = np.bincount(rows) if rows.size else np.zeros(0, np.int64)
    if int((counts * (counts - 1) // 2).sum()) > MAX_EDGES:
        return None
    conflicts = nx.Graph()
    conflicts.add_nodes_from(range(count))
    for d in range(1, int(counts.max(initial=0))):     # entries d apart in one row
        same = rows[d:] == rows[:-d]
        conflicts.add_edges_from(zip(cols[:-d][same].tolist(), cols[d:][same].tolist()))
    colour = nx.greedy_color(conflicts, strategy="largest_first")
    return np.array([colour[k] for k in range(count)], dtype=np.int64)


def sweeps(rows, cols, shape, reverse=True) -> tuple:
    """How to evaluate the pattern compressed: ("forward", a colour per column), or with
    ``reverse``, ("reverse", a colour per row) when that takes fewer sweeps.  A colouring
    not worth computing is the trivial one (a colour each)."""
    m, n = shape
    ways = [("forward", colouring(rows, cols, n), n)]
    if reverse:
        by_col = np.lexsort((rows, cols))
        ways.append(("reverse", colouring(cols[by_col], rows[by_col], m), m))
    ways = [(d, np.arange(k) if c is None else c) for d, c, k in ways]
    return min(ways, key=lambda w: int(w[1].max()) + 1 if w[1].size else 0)
