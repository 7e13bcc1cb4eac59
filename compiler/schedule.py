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
  chunks of 400 it takes well under one, of 200 another ~10% less on W5's
  unrolled gradient, with the same call times), while a chunk boundary only
  stores the few values that cross it — which reverse mode keeps anyway.  Straight-line
  scalar code (a graph of scalars) is split the same way, ``MAX_SCALAR`` members per
  function: LLVM's code generator is super-linear in the size of one function.
  Both are cut in depth-first post-order from the outputs (see ``_stages``).
"""
from __future__ import annotations

import array
import math
from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from .graph import Graph, ancestors
from .ops import STRUCTURED, contiguous_strides, kind_of

MAX_KERNEL = 200
MAX_SCALAR = 500       # straight-line scalar members per function (see _stages)


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
    # (index view, bound, stride): a fused gather or scatter — the element's address moves
    # on by j·stride, j read from the index view (in this view's coordinates) at the same
    # position and wrapped into [0, bound) when negative
    indirect: tuple = ()

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
    # (member id, indirect View, size): member values added into a zeroed buffer of
    # ``size`` elements (a fused scatter_add), so they need no buffer of their own
    scatters: list = field(default_factory=list)

    def reads(self):
        views = [*self.loads.values(), *(v for _, v, _ in self.scatters)]
        return [*self.loads.values()] + [ix for v in views for ix, _, _ in v.indirect]

    def writes(self):
        return [*self.stores.values(), *(r.out for r in self.reductions.values()),
                *(v for _, v, _ in self.scatters)]


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
class Loop:
    """A loop node: ``body`` (a program of its own, over the body graph ``graph``) run
    ``length`` times, backwards with ``reverse``.  Step ``s`` reads the carry from row
    ``s∓1`` of ``out`` (``inits`` at the first step), row ``s`` of each of ``xs`` and all of
    ``consts``, and writes the body's outputs into row ``s`` of ``out``: part ``p`` at
    ``parts[p] = (offset, size)`` of the row, written by body output ``first[p]``'s
    slot; a part that repeats an earlier output is copied from it.  With ``ring``, ``out``
    has two rows, step ``s`` writing row ``s % 2`` (only the last step's row is read)."""
    body: "Program"
    graph: Graph
    inits: list
    xs: list
    consts: list
    out: View
    length: int
    reverse: bool
    parts: list
    first: list
    ring: bool = False

    def reads(self):
        return [*self.inits, *self.xs, *self.consts]


@dataclass
class Program:
    inputs: list                   # node ids, in pointer-table order
    outputs: list                  # node ids, in pointer-table order
    buffers: list = field(default_factory=list)
    steps: list = field(default_factory=list)
    streamed: int = 0              # leading steps handed over as scheduled (see schedule)


def schedule(g: Graph, inputs: list[int], outputs: list[int], stream=None,
             stream_from: int = 0) -> Program:
    """The program computing ``outputs`` from ``inputs``: buffers, and steps in order.

    ``stream(kernel, prog)``: for a straight-line program of ``stream_from`` or more
    operations, each function of its scalar code is handed over as soon as it is
    complete, so it is lowered (and LLVM compiles it) while the rest is scheduled; those
    kernels come first in ``prog.steps`` (``prog.streamed`` of them)."""
    attrs = g.attrs
    need = ancestors(g, outputs)
    # Per-node facts are lists indexed by node id (ids are 1, 2, …): a dict of 260,000
    # entries is ~10 MB, a list 2 MB, and list lookups are cheaper.
    size = len(attrs) + 1
    kinds, of_op = [None] * size, {}       # node -> its kind (operator -> its kind)
    for i in need:
        op = attrs[i]["op"]
        kind = of_op.get(op)
        if kind is None:
            kind = of_op[op] = kind_of(op)
        kinds[i] = kind

    def readers(i):     # (a few operators ask)
        return [c for c in g.consumers(i) if c in need]

    stage, group, rank, ranked = _stages(g, need, outputs, kinds)
    prog = Program(list(inputs), list(outputs))
    view: list = [None] * size         # node -> the View its value is read through

    def new_buffer(kind, index, shape, dtype):
        prog.buffers.append(Buffer(kind, index, math.prod(shape), dtype))
        return View(len(prog.buffers) - 1, shape, contiguous_strides(shape), dtype)

    for k, i in enumerate(inputs):
        view[i] = new_buffer("input", k, attrs[i]["shape"], attrs[i]["dtype"])
    out_index = {i: k for k, i in enumerate(outputs)}
    temps = 0

    def temp_buffer(shape, dtype):
        nonlocal temps
        temps += 1
        return new_buffer("temp", temps - 1, shape, dtype)

    def own_buffer(node):     # an output's slot, or the next temporary
        a = attrs[node]
        if node in out_index:
            return new_buffer("output", out_index[node], a["shape"], a["dtype"])
        return temp_buffer(a["shape"], a["dtype"])

    kernels: dict[tuple, Kernel] = {}
    producer: dict[int, object] = {}     # buffer -> step that writes it
    order = []
    scatters_of = _fusable_scatters(need, attrs, group, set(inputs))   # member -> scatters it feeds
    fused = {s for ss in scatters_of.values() for s in ss}
    crossing = _crossing(need, attrs, kinds, group, fused)
    streaming = stream is not None and _streamable(need, kinds, group, scatters_of,
                                                   stream_from)
    streamed, open_kernels, bucket = [], [], None   # (see _streamable)

    def buffer_of(x):
        """``x``'s view for a step that reads a buffer.  A scalar constant has none (loops
        inline it): it gets a buffer filled with it, made once — a Hessian's tangent of an
        index's adjoint can be a constant embedded into zeros."""
        v = view[x]
        if v is None and attrs[x]["op"] == "const":
            v = view[x] = temp_buffer(attrs[x]["shape"], attrs[x]["dtype"])
            step = producer[v.buffer] = Assemble(v, attrs[x]["params"][0], [])
            order.append(step)
        return v

    def hand_over():        # the open scalar functions are complete
        for kernel in open_kernels:
            stream(kernel, prog)
        streamed.extend(open_kernels)
        open_kernels.clear()
    for i in ranked if streaming else sorted(need):
        a = attrs[i]
        kind = kinds[i]
        if streaming and rank[i] // MAX_SCALAR != bucket:
            hand_over()         # (those of the last bucket of ranks)
            bucket = rank[i] // MAX_SCALAR
        if kind == "elementwise":
            # (most nodes: one loop's or function's member, stored if read elsewhere)
            key = group[i]
            kernel = kernels.get(key)
            if kernel is None:
                kernel = kernels[key] = Kernel(key[1], np.dtype(key[2]), [], {}, {}, {}, {})
                if streaming and key[0] == 0 and key[1] == ():
                    open_kernels.append(kernel)
                else:
                    order.append(kernel)
            kernel.members.append(i)
            _read(kernel, a["args"], attrs, kinds, view, group, key)
            if i in out_index or i in crossing:
                kernel.stores[i] = view[i] = own_buffer(i)
                producer[view[i].buffer] = kernel
            for sc in scatters_of.get(i, ()):
                _, *index = attrs[sc]["args"]
                view[sc] = own_buffer(sc)
                producer[view[sc].buffer] = kernel
                kernel.scatters.append(
                    (i, _indirect(view[sc], a["shape"], [view[k] for k in index]),
                     math.prod(attrs[sc]["shape"])))
            continue
        op = a["op"]
        if kind == "leaf" or i in fused:   # a fused scatter is written by its operand's loop
            continue
        if kind == "view":   # new strides over the operand's buffer
            base = buffer_of(a["args"][0])
            offset, strides = STRUCTURED[op].view(base.offset, base.strides, a["shape"],
                                                  a["params"])
            view[i] = View(base.buffer, a["shape"], strides, base.dtype, offset)
            continue
        if op == "embed" and _fusable_embed(i, a, readers(i), attrs, out_index):
            view[i] = _masked(buffer_of(a["args"][0]), a)  # read in its consumers' loops
            continue
        if op == "gather" and _fusable_gather(i, a, readers(i), attrs, out_index, view):
            x, *index = a["args"]                          # read in its consumers' loops
            view[i] = _indirect(buffer_of(x), a["shape"], [view[k] for k in index])
            continue
        materialise = i in out_index or i in crossing
        if materialise:
            view[i] = own_buffer(i)
        if kind == "loop":
            ring = _final_row_only(i, a, readers(i), attrs, out_index)
            if ring:       # two rows in turn; consumers read the last step's through a view
                (length, width), body = a["shape"], a["params"][0]
                out = temp_buffer((2, width), a["dtype"])
                last = 0 if body.reverse else length - 1
                view[i] = View(out.buffer, a["shape"], out.strides, a["dtype"],
                               (last % 2 - last) * width)
            elif not materialise:
                view[i] = own_buffer(i)
            operands = []
            for x in a["args"]:         # the body reads whole contiguous buffers
                v = buffer_of(x)
                if not _plain(v):       # a strided view: copied
                    copy = temp_buffer(attrs[x]["shape"], attrs[x]["dtype"])
                    step = producer[copy.buffer] = Assemble(copy, None, [(v, copy)])
                    order.append(step)
                    v = copy
                operands.append(v)
            if not ring:
                out = view[i]
            step = _loop(a["params"][0], operands, out, ring)
            producer[view[i].buffer] = step
            order.append(step)
            continue
        if kind in ("contraction", "assemble", "gather", "scan"):
            if kind == "scan":
                step = Scan(buffer_of(a["args"][0]), view[i], a["params"][0])
            elif kind == "contraction":
                x, y = a["args"]
                step = MatMul(buffer_of(x), buffer_of(y), view[i])
            elif kind == "gather":
                x, *index = a["args"]
                scatter = op == "scatter_add"
                indexed = a["params"][0] if scatter else attrs[x]["shape"]
                step = Gather(buffer_of(x), [view[k] for k in index], view[i],
                              tuple(indexed[:len(index)]), scatter)
            else:
                step = _assemble(a, [buffer_of(x) for x in a["args"]], view[i],
                                 [attrs[x]["shape"] for x in a["args"]])
            producer[view[i].buffer] = step
            order.append(step)
            continue
        # a reduction (every other kind is handled above): in its operand's loop, or its own
        key = group[i]
        kernel = kernels.get(key)
        if kernel is None:
            kernel = kernels[key] = Kernel(key[1], np.dtype(key[2]), [], {}, {}, {}, {})
            order.append(kernel)
        operand = a["args"][0]
        _read(kernel, (operand,), attrs, kinds, view, group, key)
        kernel.reductions[i] = Reduction(operand, view[i], *a["params"], op=op)
        if materialise:
            producer[view[i].buffer] = kernel
    hand_over()
    for kernel in kernels.values():    # in depth-first order too: a value beside its reader
        kernel.members.sort(key=rank.__getitem__)
    prog.steps = streamed + _order_steps(order, producer)
    prog.streamed = len(streamed)
    return prog


def _crossing(need, attrs, kinds, group, fused) -> set:
    """The nodes whose value leaves their kernel: read by a node of another group, or by
    one that is not a kernel member (a fused scatter reads in its operand's loop)."""
    crossing = set()
    for c in need:
        if c in fused:
            continue
        args = attrs[c]["args"]
        if not args:
            continue
        if kinds[c] not in ("elementwise", "reduction"):
            crossing.update(args)
            continue
        here = group[c]
        for x in args:
            if group[x] != here:
                crossing.add(x)
    return crossing


def _streamable(need, kinds, group, scatters_of, at_least) -> bool:
    """Whether a program's stage-0 scalar functions can be handed over as they are made
    (``schedule``'s ``stream``): in depth-first rank order, a function's members all
    come before the next bucket of ranks, and it reads only inputs and earlier
    functions.  Not where a function would gain a member later (a fused reduction or
    scatter, each of a later rank) or where two dtypes share a bucket."""
    members = scalar = 0
    dtypes = set()
    for i in need:
        kind = kinds[i]
        if kind == "elementwise":
            members += 1
            key = group[i]
            if key[0] == 0 and key[1] == ():
                scalar += 1
                dtypes.add(key[2])
        elif kind == "reduction" and group[i][1] == ():
            return False
    return not scatters_of and members >= at_least and scalar > 0 and len(dtypes) == 1


def _plain(v: View) -> bool:
    """Whether ``v`` is one contiguous block, row-major (size-1 axes may have any stride)."""
    return not v.mask and not v.indirect and all(
        n == 1 or st == c for n, st, c in zip(v.shape, v.strides, contiguous_strides(v.shape)))


def _final_row_only(i, a, consumers, attrs, out_index) -> bool:
    """Whether only the last step's row of loop ``i`` is read (its final carry: a forward
    pass without ys), so two rows taken in turn hold what is needed."""
    body = a["params"][0]
    last = 0 if body.reverse else a["shape"][0] - 1
    return i not in out_index and bool(consumers) and all(
        attrs[c]["op"] == "index" and attrs[c]["params"][0][0] in
        (("int", last), ("slice", last, 1, 1)) for c in consumers)


def _loop(body, operands: list, out: View, ring: bool = False) -> Loop:
    """The Loop step of a loop node: its body scheduled as a program of its own."""
    nc, nx_ = len(body.carry), len(body.xs)
    unique = list(dict.fromkeys(body.outputs))
    program = schedule(body.graph, [*body.carry, *body.xs, *body.consts], unique)
    return Loop(program, body.graph, operands[:nc], operands[nc:nc + nx_],
                operands[nc + nx_:], out, body.length, body.reverse, list(body.slices),
                [unique.index(o) for o in body.outputs], ring)


def _fusable_embed(i, a, consumers, attrs, out_index) -> bool:
    """An embed read only by kernels, with a region of unit-step slices on axes longer
    than 1: its consumers read the operand through a masked view, with no buffer of its
    own (the adjoint of x[1:] - x[:-1] is then one loop, not a fill and a copy each)."""
    if i in out_index or len(a["args"]) > 1 or \
            not all(kind_of(attrs[c]["op"]) in ("elementwise", "reduction") for c in consumers):
        return False
    shape, spec = a["params"]
    return all(it[0] == "slice" and it[2] in (1, -1) and (n > 1 or it == ("slice", 0, 1, n))
               for it, n in zip(spec, shape)) and len(spec) == len(shape)


def _fusable_gather(i, a, consumers, attrs, out_index, view) -> bool:
    """A gather read only by kernels, from a plain view: its consumers load through the
    index arrays themselves, so X[iu] − X[ju] makes no copies of X."""
    x, *index = a["args"]
    return (i not in out_index and bool(consumers)
            and all(kind_of(attrs[c]["op"]) in ("elementwise", "reduction") for c in consumers)
            and all(view[k] is not None and not view[k].mask and not view[k].indirect
                    for k in (x, *index)))


def _fusable_scatters(need, attrs, group, inputs) -> dict:
    """Each kernel member → the scatter_adds of it that its loop can do itself (adding
    into the zeroed output at the indexed positions), so the adjoint of a gather needs no
    buffer for the values it scatters."""
    scatters_of = {}
    for s in sorted(need):
        a = attrs[s]
        if a["op"] != "scatter_add":
            continue
        x, *index = a["args"]
        if (group[x] is not None and kind_of(attrs[x]["op"]) == "elementwise"
                and attrs[x]["dtype"] == a["dtype"]
                and all(k in inputs for k in index)):
            scatters_of.setdefault(x, []).append(s)
    return scatters_of


def _indirect(base: View, shape: tuple, index: list) -> View:
    """``base`` (the indexed array) read or written at ``shape``'s positions: the leading
    dims are the index arrays' (each index moves along one of ``base``'s leading axes),
    the rest are ``base``'s own remaining axes."""
    k, nb = len(index), len(shape) - (len(base.shape) - len(index))
    rest = base.strides[k:]
    steps = tuple(
        (View(ix.buffer, shape, ix.broadcast_to(shape[:nb]) + (0,) * len(rest), ix.dtype,
              ix.offset), n, stride)
        for ix, n, stride in zip(index, base.shape, base.strides))
    return View(base.buffer, shape, (0,) * nb + rest, base.dtype, base.offset, (), steps)


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


def _read(kernel: Kernel, args, attrs, kinds, view, group, key):
    """``kernel`` (group ``key``) reads ``args``: a constant is inlined, a value made
    outside the kernel loaded from its view, a member's used where it is made."""
    for x in args:
        kind = kinds[x]
        if kind == "leaf" and attrs[x]["op"] == "const":
            kernel.consts[x] = attrs[x]["params"][0]
        elif kind != "elementwise" or group[x] != key:
            kernel.loads[x] = view[x]


def _stages(g: Graph, need: set, outputs, kinds):
    """Stage of every node, the kernel group (stage, shape, dtype) of fusable ones,
    each node's depth-first rank and the nodes in that order (see ``_depth_first``)."""
    attrs = g.attrs
    n = len(attrs) + 1                 # (lists indexed by node id: see schedule)
    stage, group, size, keys = [0] * n, [None] * n, {}, {}
    rank = array.array("q", bytes(8 * n))     # (machine ints: an int object per rank was
    loops, reductions = [], []                # 7 MB of a 260,000-node compile)
    order = depth_first(g, outputs)
    for r, i in enumerate(order):
        rank[i] = r
    for i in order:             # (a topological order, as every post-order is)
        a = attrs[i]
        args = a["args"]
        kind = kinds[i]
        if kind == "leaf":
            stage[i] = 0
        elif kind == "elementwise":
            here = 0            # (the latest operand's stage; a loop, not max(): most
            for x in args:      # nodes are elementwise, of one or two operands)
                if stage[x] > here:
                    here = stage[x]
            stage[i] = here
            # a loop is split (fission); straight-line scalar code too, into functions of
            # bounded size, as LLVM's code generator is super-linear in a function's size
            if a["shape"]:
                loops.append(i)
            else:
                key = (here, (), a["dtype"].char, rank[i] // MAX_SCALAR)
                group[i] = keys.setdefault(key, key)    # one tuple per function, not node
        elif kind == "reduction":
            reductions.append(i)
            stage[i] = stage[args[0]] + 1
        elif kind in ("contraction", "assemble", "gather", "scan", "loop"):
            stage[i] = max(stage[x] for x in args) + 1
        else:  # a view is readable when its base buffer is
            (x,) = args
            stage[i] = stage[x] + (1 if kinds[x] == "elementwise" else 0)
    # A loop's members are counted in the depth-first order too: a forward-mode tangent
    # then shares its loop with the primal values it reads (in id order every tangent
    # came after all primal values, which all crossed loops through memory: the JVP of a
    # 1,000-step chain stored 8 MB and ran 12x slower than its forward pass).
    for i in sorted(loops, key=rank.__getitem__):
        a = attrs[i]
        base = (stage[i], a["shape"], a["dtype"].char)
        count = size[base] = size.get(base, 0) + 1
        group[i] = base + ((count - 1) // MAX_KERNEL,)
    for i in reductions:
        (x,) = attrs[i]["args"]
        fused = group[x] is not None and kinds[x] == "elementwise"  # in x's loop
        group[i] = group[x] if fused else \
            (stage[x], attrs[x]["shape"], attrs[x]["dtype"].char, "sum", i)
    return stage, group, rank, order


def depth_first(g: Graph, outputs) -> list:
    """``_depth_first`` of ``g``; inside ``g.remembering_ancestors()`` made once, and the
    set of its nodes is then ``ancestors(g, outputs)`` too (a compile's cache key asks
    for it first: one walk instead of two)."""
    memo = g._ancestry
    if memo is None:
        return _depth_first(g.attrs, outputs)
    key = ("depth-first", *outputs)
    order = memo.get(key)
    if order is None:
        order = memo[key] = _depth_first(g.attrs, outputs)
        memo.setdefault(tuple(outputs), set(order))
    return order


def _depth_first(attrs, outputs) -> list:
    """The nodes in a depth-first post-order from the outputs (the last first): each
    value comes right before its first reader; a node's rank is its position.
    Straight-line scalar code is cut into functions in this order, so a value mostly
    lives in the function that reads it — in id order the reverse pass's members come
    after all the forward pass's, and every forward value a gradient reads crossed
    functions through memory (Lennard-Jones N=30: 2,782 stores instead of 4,336,
    evaluation ~10% faster)."""
    order, seen = [], set()
    for o in reversed(outputs):
        stack = [o]
        while stack:
            i = stack.pop()
            if i is None:               # the node below: its operands are all ranked
                order.append(stack.pop())
            elif i not in seen:
                seen.add(i)
                stack += (i, None)      # (i itself, not ~i: an int object per node)
                stack.extend(reversed(attrs[i]["args"]))
    return order


def _order_steps(order, producer):
    """Topological order of steps by the buffers they read."""
    deps = nx.DiGraph()
    for n, step in enumerate(order):
        deps.add_node(n)
    index = {id(s): n for n, s in enumerate(order)}
    for n, step in enumerate(order):
        for v in step.reads():
            p = producer.get(v.buffer)
            if p is not None and p is not step and id(p) in index:   # (not a streamed one)
                deps.add_edge(index[id(p)], n)
    return [order[n] for n in nx.lexicographical_topological_sort(deps)]
