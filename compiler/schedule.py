"""Partition a graph into steps: fused elementwise kernels and matmuls over buffers.

* A *kernel* is one loop nest over a domain shape.  Its members are the
  elementwise nodes of that shape, dtype and *stage*; sums whose operand has
  that shape join it as accumulators, so a reduction is fused into its producer
  and forward and backward of an elementwise region share one pass.
* The *stage* of a node counts the structured operators (sum, matmul, or a view
  of a value computed in a kernel) on the longest path from the inputs: a value
  made by a structured operator can only be read once that operator has run.
* Broadcasting is a stride of 0; ``reshape``, ``transpose`` and basic indexing are
  views (an offset and new strides over the same buffer), never copies.
* ``concatenate``, ``pad`` and ``embed`` (indexing's adjoint) are *assemble* steps: a
  new buffer, filled, with each operand copied into its region.  ``gather`` and
  ``scatter_add`` are steps of their own: a loop reading through index arrays; so is
  ``cumsum`` (a running sum along one axis).
* A member is stored to a buffer only when something outside its kernel reads
  it, or it is an output.  Temporaries live in one workspace the native entry
  allocates.
* A kernel holds at most ``MAX_KERNEL`` members: longer ones are split into
  consecutive loops (fission).  LLVM's loop vectoriser grows quadratically with
  the size of a loop body (a 19,000-member kernel took 10 s to vectorise; in
  chunks of 400 it takes well under one), while a chunk boundary only stores
  the few values that cross it — which reverse mode keeps anyway.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from .graph import Graph, ancestors
from .ops import STRUCTURED, contiguous_strides, kind_of

MAX_KERNEL = 400


@dataclass(frozen=True)
class View:
    """Elements ``buffer[offset + Σ idx_d·strides_d]``; strides in elements."""
    buffer: int
    shape: tuple
    strides: tuple
    dtype: np.dtype
    offset: int = 0
    # (dim, lo, count): a fused embed's region — outside lo ≤ i_dim < lo + count the
    # value read is 0 and nothing is loaded
    mask: tuple = ()

    def broadcast_to(self, domain: tuple) -> tuple:
        """Strides of this view read over ``domain`` (numpy broadcasting)."""
        lead = len(domain) - len(self.shape)
        strides = [0] * lead
        for n, s, d in zip(self.shape, self.strides, domain[lead:]):
            strides.append(0 if n == 1 and d != 1 else s)
        return tuple(strides)


@dataclass
class Buffer:
    kind: str          # "input" | "output" | "temp"
    index: int         # position among inputs, outputs, or temps
    size: int          # elements
    dtype: np.dtype


@dataclass(frozen=True)
class Reduction:
    """A sum fused into a kernel: accumulates ``operand`` over ``axes`` into ``out``."""
    operand: int
    out: View
    axes: tuple
    keepdims: bool
    op: str = "sum"            # "sum", "amax" or "amin"


@dataclass
class Kernel:
    domain: tuple
    dtype: np.dtype
    members: list                  # elementwise node ids, topological order
    loads: dict                    # node id -> View (values read from buffers)
    stores: dict                   # member id -> View
    reductions: dict               # sum node id -> Reduction
    consts: dict                   # const node id -> float
    scalar: object = None          # its ScalarKernel, set by simplification

    def reads(self):
        return list(self.loads.values())


@dataclass
class MatMul:
    a: View
    b: View
    out: View

    def reads(self):
        return [self.a, self.b]


@dataclass
class Assemble:
    """A buffer made of pieces: ``out`` filled with ``fill`` (None: the pieces cover it),
    then each (source view, destination view in ``out``) copied."""
    out: View
    fill: object
    pieces: list

    def reads(self):
        return [src for src, _ in self.pieces]


@dataclass
class Gather:
    """``out[b, r] = src[i(b), r]`` (a gather), or with ``scatter``
    ``out[i(b), r] += src[b, r]`` into a zeroed ``out``: ``i(b)`` is one int64 value per
    index view, wrapped when negative by the ``bounds`` of the axes it indexes."""
    src: View
    indices: list
    out: View
    bounds: tuple
    scatter: bool

    def reads(self):
        return [self.src, *self.indices]


@dataclass
class Scan:
    """``out = cumsum(src, axis)``: a running sum along one axis."""
    src: View
    out: View
    axis: int

    def reads(self):
        return [self.src]


@dataclass
class Program:
    inputs: list                   # node ids, in pointer-table order
    outputs: list                  # node ids, in pointer-table order
    buffers: list = field(default_factory=list)
    steps: list = field(default_factory=list)


def schedule(g: Graph, inputs: list[int], outputs: list[int]) -> Program:
    attrs = g.nx.nodes
    need = ancestors(g, outputs)
    consumers = {i: [] for i in need}
    for i in need:
        for a in attrs[i]["args"]:
            consumers[a].append(i)

    stage, group = _stages(g, need)
    prog = Program(list(inputs), list(outputs))
    view: dict[int, View] = {}

    def new_buffer(kind, index, node):
        a = attrs[node]
        prog.buffers.append(Buffer(kind, index, math.prod(a["shape"]), a["dtype"]))
        return View(len(prog.buffers) - 1, a["shape"], contiguous_strides(a["shape"]),
                    a["dtype"])

    for k, i in enumerate(inputs):
        view[i] = new_buffer("input", k, i)
    out_index = {i: k for k, i in enumerate(outputs)}
    temps = 0

    kernels: dict[tuple, Kernel] = {}
    producer: dict[int, object] = {}     # buffer -> step that writes it
    order = []
    for i in sorted(need):
        a = attrs[i]
        op = a["op"]
        kind = kind_of(op)
        if kind == "leaf":
            continue
        if kind == "view":   # new strides over the operand's buffer
            base = view[a["args"][0]]
            offset, strides = STRUCTURED[op].view(base.offset, base.strides, a["shape"],
                                                  a["params"])
            view[i] = View(base.buffer, a["shape"], strides, base.dtype, offset)
            continue
        if op == "embed" and _fusable_embed(i, a, consumers[i], attrs, out_index):
            view[i] = _masked(view[a["args"][0]], a)       # read in its consumers' loops
            continue
        materialise = i in out_index or any(
            group.get(c) != group.get(i) or kind_of(attrs[c]["op"]) not in
            ("elementwise", "reduction") for c in consumers[i])
        if materialise:
            if i in out_index:
                view[i] = new_buffer("output", out_index[i], i)
            else:
                view[i] = new_buffer("temp", temps, i)
                temps += 1
        if kind in ("contraction", "assemble", "gather", "scan"):
            if kind == "scan":
                step = Scan(view[a["args"][0]], view[i], a["params"][0])
            elif kind == "contraction":
                x, y = a["args"]
                step = MatMul(view[x], view[y], view[i])
            elif kind == "gather":
                x, *index = a["args"]
                scatter = op == "scatter_add"
                indexed = a["params"][0] if scatter else attrs[x]["shape"]
                step = Gather(view[x], [view[k] for k in index], view[i],
                              tuple(indexed[:len(index)]), scatter)
            else:
                step = _assemble(a, [view[x] for x in a["args"]], view[i],
                                 [attrs[x]["shape"] for x in a["args"]])
            producer[view[i].buffer] = step
            order.append(step)
            continue
        key = group[i]
        kernel = kernels.get(key)
        if kernel is None:
            domain = key[1]
            kernel = kernels[key] = Kernel(domain, np.dtype(key[2]), [], {}, {}, {}, {})
            order.append(kernel)
        if kind == "reduction":
            operand = a["args"][0]
            _read(kernel, operand, attrs, view, group, key)
            kernel.reductions[i] = Reduction(operand, view[i], *a["params"], op=op)
        else:
            kernel.members.append(i)
            for arg in a["args"]:
                _read(kernel, arg, attrs, view, group, key)
            if materialise:
                kernel.stores[i] = view[i]
        if materialise:
            producer[view[i].buffer] = kernel
    prog.steps = _order_steps(order, producer)
    return prog


def _fusable_embed(i, a, consumers, attrs, out_index) -> bool:
    """An embed read only by kernels, with a region of unit-step slices on axes longer
    than 1: its consumers read the operand through a masked view, with no buffer of its
    own (the adjoint of x[1:] - x[:-1] is then one loop, not a fill and a copy each)."""
    if i in out_index or not all(kind_of(attrs[c]["op"]) in ("elementwise", "reduction")
                                 for c in consumers):
        return False
    shape, spec = a["params"]
    return all(it[0] == "slice" and it[2] in (1, -1) and (n > 1 or it == ("slice", 0, 1, n))
               for it, n in zip(spec, shape)) and len(spec) == len(shape)


def _masked(base: View, a) -> View:
    """The operand of an embed as a view in the embed's coordinates, masked to its region."""
    shape, spec = a["params"]
    offset, strides, mask = base.offset, [], []
    for d, ((_, start, step, count), stride, n) in enumerate(zip(spec, base.strides, shape)):
        # operand index j = (i − start)·step, so i's stride is step·stride
        offset -= start * step * stride
        strides.append(step * stride)
        if count != n:          # a region spanning the axis (reversed or not) needs no mask
            mask.append((d, start if step == 1 else start - count + 1, count))
    return View(base.buffer, shape, tuple(strides), base.dtype, offset, tuple(mask))


def _assemble(a, sources, out: View, shapes) -> Assemble:
    spec = STRUCTURED[a["op"]]
    pieces = []
    for src, region in zip(sources, spec.regions(shapes, a["params"])):
        offset, strides = STRUCTURED["index"].view(out.offset, out.strides, src.shape,
                                                   (region,))
        pieces.append((src, View(out.buffer, src.shape, strides, out.dtype, offset)))
    return Assemble(out, spec.fill(a["params"]), pieces)


def _read(kernel: Kernel, arg: int, attrs, view, group, key):
    if attrs[arg]["op"] == "const":
        kernel.consts[arg] = attrs[arg]["params"][0]
    elif group.get(arg) != key or kind_of(attrs[arg]["op"]) != "elementwise":
        kernel.loads[arg] = view[arg]


def _stages(g: Graph, need: set):
    """Stage of every node and the kernel group (stage, shape, dtype) of fusable ones."""
    attrs = g.nx.nodes
    stage, group, size = {}, {}, {}
    for i in sorted(need):
        a = attrs[i]
        op, args = a["op"], a["args"]
        kind = kind_of(op)
        if kind == "leaf":
            stage[i] = 0
        elif kind == "elementwise":
            stage[i] = max(stage[x] for x in args)
            base = (stage[i], a["shape"], a["dtype"].char)
            count = size[base] = size.get(base, 0) + 1
            # a loop is split; a scalar kernel has no loop to vectorise, and stays whole
            group[i] = base + ((count - 1) // MAX_KERNEL if a["shape"] else 0,)
        elif kind == "reduction":
            (x,) = args
            fused = x in group and kind_of(attrs[x]["op"]) == "elementwise"  # in x's loop
            group[i] = group[x] if fused else \
                (stage[x], attrs[x]["shape"], attrs[x]["dtype"].char, "sum", i)
            stage[i] = stage[x] + 1
        elif kind in ("contraction", "assemble", "gather", "scan"):
            stage[i] = max(stage[x] for x in args) + 1
        else:  # a view is readable when its base buffer is
            (x,) = args
            stage[i] = stage[x] + (1 if kind_of(attrs[x]["op"]) == "elementwise" else 0)
    return stage, group


def _order_steps(order, producer):
    """Topological order of steps by the buffers they read."""
    deps = nx.DiGraph()
    for n, step in enumerate(order):
        deps.add_node(n)
    index = {id(s): n for n, s in enumerate(order)}
    for n, step in enumerate(order):
        for v in step.reads():
            p = producer.get(v.buffer)
            if p is not None and p is not step:
                deps.add_edge(index[id(p)], n)
    return [order[n] for n in nx.lexicographical_topological_sort(deps)]
