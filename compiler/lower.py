"""Lowering to LLVM IR (written as text by ``irtext``, with llvmlite.ir's types and
constants): one module, one entry point per program.

Entry points have the signature ``i32 entry(ptr table)``: ``table`` holds one data
pointer per input, then one per output, in the program's order.  The entry
allocates one workspace for temporaries, runs every step (a call to an internal
function per kernel or matmul, whose buffer parameters are ``noalias``), frees
the workspace and returns 0 (1 when the workspace could not be allocated).

Scalar sympy is lowered by dispatch on the expression's type — one small method
per construct, as sympy's own ``llvmjitcode`` printer does.
"""
from __future__ import annotations

import math
import re
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import sympy as sp
from llvmlite import ir

from . import irtext
from .ops import ELEMENTWISE, OPERANDS, SYMPY_OPS
from .schedule import Assemble, Gather, Kernel, Loop, MatMul, Program, Scan
from .simplify import sympy_number

I8, I32, I64, PTR = ir.IntType(8), ir.IntType(32), ir.IntType(64), ir.PointerType()
FLOAT = {np.dtype(np.float64): ir.DoubleType(), np.dtype(np.float32): ir.FloatType()}
# Transcendentals (sin cos tan exp log tanh pow) are calls to the C math library by
# name; the JIT marks them with the host's SIMD variants (glibc's libmvec), so loops
# calling them vectorise.
# Elementwise arithmetic carries no fast-math flags: each operation rounds as IEEE says.
# fast_math=True adds "contract" (fuse a*b+c into FMA where the target has it).
FAST_ARITH = ("contract",)
# lets matmul loops vectorise; not "fast": keeps NaN checks.  (Sums write their order out
# in lanes instead: see Lowerer.kernel.)
REDUCE = ("reassoc", "contract")
ALIGN = 64
REDUCTION_START = {"sum": 0.0, "prod": 1.0, "amax": -math.inf, "amin": math.inf}


# A loop whose body calls libm runs its last, partial vector iteration with masked loads
# and stores instead of one element at a time: each element's scalar call is a whole
# vector call (see jit.add_vector_variants), so a 1,000-element loop of sin spent a tenth
# of its time on its last 8 elements, and a 40-element one two thirds on its last 8.
TAIL_FOLDED = ("llvm.loop.vectorize.predicate.enable", True)
# Such a loop runs up to 8 vector iterations side by side where the registers hold them
# (elsewhere 4, see Lowerer._interleave): each call's latency is hidden behind the others'
# work, and with the last iteration masked the 8 vectors leave no elements to run one by
# one.  1,000-step chains over 1,000 elements, forward pass: sin 0.73 -> 0.51 ms, exp
# 0.64 -> 0.56, tanh 1.43 -> 1.35 (their JVPs' live values fill the registers at 4).  A
# loop of arithmetic alone gained nothing from 8 and lost to its leftover elements (a
# 100-element polynomial chain: 4x slower).
LIBM_INTERLEAVE = 8

# Kernel members per part when a large program is compiled in parts (``Lowerer.program``)
PART_MEMBERS = 2000


def _pointer(b, table, workspace, place, name):
    """A buffer's address: its pointer in the table, or its offset in the workspace."""
    kind, at = place
    if kind == "table":
        return b.load(b.gep(table, [ir.Constant(I64, at)], source_etype=PTR), typ=PTR, name=name)
    return b.gep(workspace, [ir.Constant(I64, at)], source_etype=ir.IntType(8), name=name)


def new_module(name: str) -> irtext.Module:
    return irtext.Module(name)


@contextmanager
def loop(b: irtext.Builder, count: int, name: str, hints: tuple = ()):
    """``for i in range(count)`` (count ≥ 1, a number or an i64 value) as a do-while
    loop; yields ``i``.  ``hints``: (name, number) pairs for the loop vectoriser, e.g.
    ("llvm.loop.interleave.count", 4)."""
    count = ir.Constant(I64, count) if isinstance(count, int) else count
    pre = b.block
    body = b.append_basic_block(f"{name}.body")
    done = b.append_basic_block(f"{name}.done")
    b.branch(body)
    b.position_at_end(body)
    i = b.phi(I64, name=name)
    i.add_incoming(ir.Constant(I64, 0), pre)
    yield i
    nxt = b.add(i, ir.Constant(I64, 1))
    i.add_incoming(nxt, b.block)
    back = b.cbranch(b.icmp_unsigned("<", nxt, count), body, done)
    if hints:
        back.set_metadata("llvm.loop", b.module.loop_id(hints))
    b.position_at_end(done)


@contextmanager
def loop_nest(b: irtext.Builder, shape: tuple, name: str, hints: tuple = ()):
    """Nested ``loop``s over ``shape`` (every size ≥ 1); yields the indices, outermost
    first.  ``hints``: of the innermost loop (see ``loop``)."""
    cms = [loop(b, n, f"{name}{d}", hints if d == len(shape) - 1 else ())
           for d, n in enumerate(shape)]
    indices = [cm.__enter__() for cm in cms]
    yield indices
    for cm in reversed(cms):
        cm.__exit__(None, None, None)


def element(b: irtext.Builder, pointer, view, indices, strides):
    """The address of ``view``'s element at ``offset + Σ indices·strides``."""
    off = ir.Constant(I64, view.offset) if view.offset else None
    for i, s in zip(indices, strides):
        if s:
            term = i if s == 1 else b.mul(i, ir.Constant(I64, s))
            off = term if off is None else b.add(off, term)
    ety = I64 if view.dtype.kind == "i" else I8 if view.dtype.kind == "b" else FLOAT[view.dtype]
    return pointer if off is None else b.gep(pointer, [off], source_etype=ety)


def load(b: irtext.Builder, address, dtype, ty):
    """The element at ``address`` as a ``ty`` number: a bool (a byte) as 0 or 1."""
    if dtype.kind == "b":
        bit = b.icmp_unsigned("!=", b.load(address, typ=I8), ir.Constant(I8, 0))
        return b.uitofp(bit, ty)
    return _convert(b, b.load(address, typ=FLOAT[dtype]), ty)


def moved(b: irtext.Builder, address, j, bound: int, stride: int, ety):
    """``address`` moved on by index ``j`` along an axis of ``bound`` elements and
    ``stride``: j is checked to lie in [-bound, bound) before the call, and a negative one
    counts from the end."""
    j = b.select(b.icmp_signed("<", j, ir.Constant(I64, 0)), b.add(j, ir.Constant(I64, bound)), j)
    return b.gep(address, [b.mul(j, ir.Constant(I64, stride))], source_etype=ety)


def fill(b: irtext.Builder, pointer, size: int, value) -> None:
    """``pointer[0:size] = value`` (a constant of the buffer's type)."""
    if size == 1:
        b.store(value, pointer)
    elif size > 1:
        with loop(b, size, "z") as i:
            b.store(value, b.gep(pointer, [i], source_etype=value.type))


def collapse(domain: tuple, stride_sets: list, keep=frozenset()) -> tuple:
    """Merge adjacent dims that every access walks contiguously; drop size-1 dims.  Dims
    in ``keep`` are merged with none.  Returns the shape, each access's strides, and
    where each kept dim of ``domain`` went."""
    dims = [(n, [s[d] for s in stride_sets], d) for d, n in enumerate(domain) if n != 1]
    merged, where = [], {}
    for n, strides, d in dims:
        if merged and d not in keep and merged[-1][2] not in keep:
            pn, pstrides, pd = merged[-1]
            if all(ps == s * n for ps, s in zip(pstrides, strides)):
                merged[-1] = (pn * n, strides, pd)
                where[d] = len(merged) - 1
                continue
        merged.append((n, strides, d))
        where[d] = len(merged) - 1
    shape = tuple(n for n, _, _ in merged)
    per_access = [tuple(st[k] for _, st, _ in merged) for k in range(len(stride_sets))]
    return shape, per_access, where


# Products of at least this many multiply-adds go to BLAS when the runtime has one.
BLAS_MIN_WORK = 32 * 32 * 32
CBLAS_ROW_MAJOR, CBLAS_NO_TRANS, CBLAS_TRANS = 101, 111, 112


def _blas_layout(view):
    """(transpose flag, leading dimension) reading a 2-D view as BLAS does, or None."""
    (rows, cols), (s0, s1) = view.shape, view.strides
    if s1 == 1 or cols == 1:
        return CBLAS_NO_TRANS, max(s0, cols, 1) if rows > 1 else max(cols, 1)
    if s0 == 1 or rows == 1:
        return CBLAS_TRANS, max(s1, rows, 1) if cols > 1 else max(rows, 1)
    return None


def _peak_live(operations, loads: set, stores: set) -> int:
    """The most values live at once in a kernel body's members (``operations``: (id,
    operator, operands) in order), a load from its first use, a stored value to the end."""
    last = {}
    for n, (_, _, args) in enumerate(operations):
        for a in args:
            last[a] = n
    end = len(operations)
    last.update((s, end) for s in stores)
    live, peak, seen = 0, 0, set()
    for n, (m, _, args) in enumerate(operations):
        for a in args:
            if a in loads and a not in seen:
                seen.add(a)
                live += 1
        live += 1
        peak = max(peak, live)
        live -= sum(1 for a in set(args) if last.get(a) == n)
        if m not in last:
            live -= 1
    return peak


class Lowerer:
    """Emits one program (a list of steps over buffers) into ``module``.

    ``blas``: call ``__symgrad_[sd]gemm`` (an ILP64 CBLAS gemm the runtime binds) for
    large enough products instead of loops."""

    def __init__(self, module: ir.Module, blas: bool = False, fast_math: bool = False):
        self.module = module
        self.blas = blas
        self.arith = FAST_ARITH if fast_math else ()
        self.inline_steps = False    # a batch loop inlines a short program's steps
        # Parts (see ``program``): a callback taking each finished module's text (and
        # whether it is all straight-line code), and the kernel members in the current part
        self.hand_over = None
        self._in_part = 0
        self.scalar = lambda k: k.scalar   # a kernel's ScalarKernel (the pipeline's: made lazily)
        # kernel -> its members' (id, operator, operands), set where the kernels are the
        # graph's own operations (not SymPy-simplified): every kernel's members are then
        # written from member patterns (see ``_member_lines``)
        self.operations = None
        self._places = None     # buffer -> ("table", slot) | ("temp", offset), see _run
        self.vector_bits = 256          # the host's widest vector (see ``_loop_hints``)
        self._streamed = None   # functions lowered as scheduled (see ``stream``)
        self.calls_libm = False     # whether the code written since it was reset calls libm

    # ---- helpers ---------------------------------------------------------------
    def _fn(self, name, ret, params, kind=irtext.Function):
        return kind(self.module, ir.FunctionType(ret, params), name)

    def _extern(self, name, ty, nargs=1):
        return self.module.declare(name, ir.FunctionType(ty, [ty] * nargs))

    def _intrinsic(self, name, ty, nargs=1):
        suffix = "f64" if isinstance(ty, ir.DoubleType) else "f32"
        return self._extern(f"{name}.{suffix}", ty, nargs)

    # ---- entry point --------------------------------------------------------------
    def program(self, name: str, prog: Program) -> None:
        """The entry ``i32 name(ptr table)`` running ``prog``.  With ``hand_over`` set,
        the steps go into modules of their own (parts), each handed over as text as soon
        as it holds ``PART_MEMBERS`` kernel members, so LLVM compiles one part while Python
        lowers the next; the entry stays in ``self.module`` and calls them by name."""
        streamed, self._streamed = self._streamed, None
        if streamed is not None:      # its first steps are in parts already (``stream``)
            main = streamed["main"]
        else:
            main, self._in_part = self.module, 0
            if self.hand_over is not None:
                self.module = new_module(f"{name}.part")
        entry = irtext.Function(main, ir.FunctionType(I32, [PTR]), name)
        entry.args[0].name = "table"
        b = irtext.Builder(entry.append_basic_block("entry"))
        offsets, total = _temporaries(name, prog)
        workspace = self._malloc(b, total) if total else None
        try:
            status = self._run(b, name, prog, entry.args[0], workspace, offsets,
                               main=main if self.hand_over is not None else None,
                               done=streamed["done"] if streamed is not None else ())
            if self.hand_over is not None and self.module.globals:
                self._hand_over_part()
        finally:
            self.module = main
        if workspace is not None:
            self._free(b, workspace)
        b.ret(status)

    def stream(self, name: str, kernel: Kernel, prog: Program) -> None:
        """Lower one straight-line function of ``prog`` (the entry ``name``) as the
        scheduler hands it over (``schedule``'s ``stream``): its part goes to LLVM while
        the rest of the program is scheduled, instead of after (Lennard-Jones N=60: LLVM
        started 0.25 s into a 0.45 s schedule and lowering, and finished 0.15 s after
        it).  ``program`` then lowers the other steps and calls all of them."""
        state = self._streamed
        if state is None:
            state = self._streamed = {"main": self.module, "done": [], "places": {},
                                      "placed": 0, "total": 0}
            self.module, self._in_part = new_module(f"{name}.part"), 0
        places, n_in = state["places"], len(prog.inputs)
        for k in range(state["placed"], len(prog.buffers)):    # (as _temporaries does)
            buf = prog.buffers[k]
            if buf.kind == "temp":
                start, state["total"] = _next_temporary(buf, state["total"])
                places[k] = ("temp", start)
            else:
                places[k] = _table_place(buf, n_in)
        state["placed"] = len(prog.buffers)
        fname = f"{name}.step{len(state['done'])}"
        self._places = places
        try:
            fn, buffers = self.kernel(fname, kernel)
        finally:
            self._places = None
        state["done"].append((self._declared(fn, state["main"], len(kernel.members)),
                              buffers, True))

    def _declared(self, fn, main, members: int):
        """``fn``, defined in the current part, declared in ``main`` (which calls it); the
        part is handed over once it holds PART_MEMBERS members."""
        fn.linkage = ""
        declared = irtext.Function(main, fn.function_type, fn.name)
        self._in_part += members
        if self._in_part >= PART_MEMBERS:
            self._hand_over_part()
            entry, _, n = fn.name.rpartition(".step")
            self.module, self._in_part = new_module(f"{entry}.part{n}"), 0
        return declared

    def _hand_over_part(self) -> None:
        """The current part's text, and whether it is all written straight-line code (no
        function in it built from blocks: loops, matmuls, SymPy-lowered kernels)."""
        straight = not any(getattr(g, "blocks", None) for g in self.module.globals.values())
        self.hand_over(str(self.module), straight)
        self.module.release()

    def _malloc(self, b, size):
        """``malloc(size)``; the function returns 1 where it fails."""
        malloc = b.module.declare("malloc", ir.FunctionType(PTR, [I64]))
        workspace = b.call(malloc, [size if isinstance(size, irtext.Value) else
                                    ir.Constant(I64, size)], name="workspace")
        ok, fail = b.append_basic_block("ok"), b.append_basic_block("oom")
        b.cbranch(b.icmp_unsigned("==", workspace, ir.Constant(PTR, None)), fail, ok)
        b.position_at_end(fail)
        b.ret(ir.Constant(I32, 1))
        b.position_at_end(ok)
        return workspace

    def _free(self, b, pointer):
        free = b.module.declare("free", ir.FunctionType(ir.VoidType(), [PTR]))
        b.call(free, [pointer])

    def _run(self, b, name, prog: Program, table, workspace, offsets, main=None, done=()):
        """Every step of ``prog`` over the buffers in ``table`` (inputs, then outputs) and
        the temporaries at ``offsets`` in ``workspace``; returns the status (0, or 1 when a
        loop's body could not allocate its workspace).  ``main``: the module of ``b``'s
        function when the steps go into parts (see ``program``); ``done``: (function,
        buffers, by place) of the first steps, lowered already (``stream``)."""
        n_in, places, pointers = len(prog.inputs), {}, {}
        for k, buf in enumerate(prog.buffers):
            if buf.kind != "temp":
                places[k] = _table_place(buf, n_in)
        places.update((k, ("temp", off)) for k, off in offsets)

        def pointer(k):     # made where first passed: steps run in sequence, one block
            if k not in pointers:
                pointers[k] = _pointer(b, table, workspace, places[k], f"buf{k}")
            return pointers[k]
        status = ir.Constant(I32, 0)
        base = [table, workspace if workspace is not None else ir.Constant(PTR, None)]
        for n, step in enumerate(prog.steps):
            if n < len(done):
                fn, buffers, by_place = done[n]
                b.call(fn, base if by_place else [pointer(k) for k in buffers])
                continue
            if main is None and _inlined(step):
                (self._inline if isinstance(step, Kernel) else self._inline_assemble)(
                    b, step, pointer)
                continue
            fname = f"{name}.step{n}"
            # Straight-line scalar code reads and writes many one-value buffers: its
            # steps take the table and workspace and find them there, instead of a
            # pointer argument each (hundreds, passed on the stack at every call)
            self._places = places if isinstance(step, Kernel) and not step.domain else None
            try:
                fn, buffers = {Kernel: self.kernel, MatMul: self.matmul,
                               Assemble: self.assemble, Gather: self.gather, Scan: self.scan,
                               Loop: self.loop}[type(step)](fname, step)
            finally:
                by_place, self._places = self._places is not None, None
            if main is not None:         # defined in a part, called from the entry's module
                fn = self._declared(fn, main, len(step.members)
                                    if isinstance(step, Kernel) else 1)
            result = b.call(fn, base if by_place else [pointer(k) for k in buffers])
            if isinstance(step, Loop):
                status = b.or_(status, result)
        return status

    def _inline(self, b, k: Kernel, pointer) -> None:
        """A one-element kernel of a few members (``_inlined``) written in its caller:
        a function of its own cost LLVM's quick code generator ~45 µs whatever its size,
        and W9's gradient had 20 that store a constant.  The same instructions."""
        ty = FLOAT[k.dtype]
        loaded = {i: load(b, _single(b, pointer, v), v.dtype, ty) for i, v in k.loads.items()}
        result = self._members(b, k, ty, loaded) if self.operations is not None else \
            self._sympy_members(b, self.scalar(k), ty, loaded)
        for i, v in k.stores.items():
            b.store(_convert(b, result(i), FLOAT[v.dtype]), _single(b, pointer, v))

    def _inline_assemble(self, b, step: Assemble, pointer) -> None:
        """A buffer assembled from single elements (``_inlined``), written in its caller:
        W9's carries are stacks of scalars, and their adjoints' starting zeros."""
        out = step.out
        ty = FLOAT[out.dtype]
        if step.fill is not None:
            b.store(ir.Constant(ty, step.fill), _single(b, pointer, out))
        for src, dst in step.pieces:
            value = b.load(_single(b, pointer, src), typ=FLOAT[src.dtype])
            b.store(_convert(b, value, ty), _single(b, pointer, dst))

    def batched(self, name: str, prog: Program) -> None:
        """``i32 name(ptr table, i64 count, ptr steps)``: the program once per batch element
        (count ≥ 1), each of its pointers advanced by ``steps[k]`` bytes per element (0 for
        an argument every element shares); returns the first nonzero status.  The loop is
        native, so a batch runs without the interpreter (and without its lock)."""
        slots = len(prog.inputs) + len(prog.outputs)
        self.inline_steps = len(prog.steps) <= 16     # small programs: one tight loop
        try:
            self.program(f"{name}.one", prog)
        finally:
            self.inline_steps = False
        one = self.module.globals[f"{name}.one"]
        one.linkage = "internal"
        fn = self._fn(name, I32, [PTR, I64, PTR])
        table, count, steps = fn.args
        b = irtext.Builder(fn.append_basic_block("entry"))
        local = b.alloca(PTR, slots, name="local")
        failed = fn.append_basic_block("failed")
        with loop(b, count, "element") as i:
            for k in range(slots):
                base = b.load(b.gep(table, [ir.Constant(I64, k)], source_etype=PTR), typ=PTR)
                step = b.load(b.gep(steps, [ir.Constant(I64, k)], source_etype=I64), typ=I64)
                here = b.gep(base, [b.mul(i, step)], source_etype=I8)
                b.store(here, b.gep(local, [ir.Constant(I64, k)], source_etype=PTR))
            status = b.call(one, [local])
            go = fn.append_basic_block("go")
            b.cbranch(b.icmp_signed("!=", status, ir.Constant(I32, 0)), failed, go)
            b.position_at_end(go)
        b.ret(ir.Constant(I32, 0))
        b.position_at_end(failed)
        b.ret(ir.Constant(I32, 1))

    def _begin(self, name, views):
        """A step function over the buffers of ``views``: (function, buffers, buffer ->
        pointer argument, builder at its entry)."""
        buffers = sorted({v.buffer for v in views})
        if self._places is not None:           # (table, workspace): see _run
            fn = self._step_fn(name, [None, None])
            b = irtext.Builder(fn.append_basic_block("entry"))
            return fn, buffers, {k: _pointer(b, *fn.args, self._places[k], f"buf{k}")
                                 for k in buffers}, b
        fn = self._step_fn(name, buffers)
        return fn, buffers, dict(zip(buffers, fn.args)), \
            irtext.Builder(fn.append_basic_block("entry"))

    def _step_fn(self, name, buffers, kind=irtext.Function):
        fn = self._fn(name, ir.VoidType(), [PTR] * len(buffers), kind)
        fn.linkage = "internal"
        fn.attributes.add("nounwind")
        # each step is optimised on its own: inlined into the entry, a program of many
        # steps would become one huge function, which LLVM's passes digest slowly
        if not self.inline_steps:
            fn.attributes.add("noinline")
        for arg in fn.args:
            arg.add_attribute("noalias")
        return fn

    # ---- a fused elementwise kernel -------------------------------------------------------
    def kernel(self, name, k: Kernel):
        if self.operations is not None and self._places is not None and writable(k):
            return self.written(name, k)
        # the members' code: SymPy's lowering, or (faithful programs) their patterns
        sk = self.scalar(k) if self.operations is None else None
        fn, buffers, ptr, b = self._begin(name, [*k.reads(), *k.writes()])
        ty = FLOAT[k.dtype]

        red_strides = {i: _reduction_strides(k.domain, r) for i, r in k.reductions.items()}
        for r in k.reductions.values():   # accumulators start at 0 (sum), 1, −inf (amax), inf
            fill(b, ptr[r.out.buffer], math.prod(r.out.shape),
                 ir.Constant(FLOAT[r.out.dtype], REDUCTION_START[r.op]))
        for _, v, size in k.scatters:
            fill(b, ptr[v.buffer], size, ir.Constant(FLOAT[v.dtype], 0.0))
        if math.prod(k.domain) == 0:       # zero-size tensors: no element to compute
            b.ret_void()
            return fn, buffers

        def walks(v):   # the strides of v's address over the domain, then of its indices'
            return [v.broadcast_to(k.domain), *(ix.broadcast_to(k.domain)
                                                for ix, _, _ in v.indirect)]
        accesses = ([("load", i, walks(v)) for i, v in k.loads.items()]
                    + [("store", i, walks(v)) for i, v in k.stores.items()]
                    + [("scatter", n, walks(v)) for n, (_, v, _) in enumerate(k.scatters)]
                    + [("reduce", r, [red_strides[r]]) for r in k.reductions])
        # a masked (fused embed) view's region dims stay loops of their own
        masked = {len(k.domain) - len(v.shape) + d for v in k.loads.values()
                  for d, _, _ in v.mask}
        lanes, along = _lanes(k, red_strides)
        if lanes > 1:      # the domain's own loops: a sum's order is the same in every entry
            masked = set(range(len(k.domain)))
        shape, flat, where = collapse(k.domain, [s for _, _, ss in accesses for s in ss],
                                      keep=masked)
        regrouped = []
        for kind, i, ss in accesses:
            regrouped.append((kind, i, flat[:len(ss)]))
            flat = flat[len(ss):]
        accesses = regrouped
        indices = []

        def address(v, walk):
            at = element(b, ptr[v.buffer], v, indices, walk[0])
            for (ix, bound, stride), st in zip(v.indirect, walk[1:]):
                j = b.load(element(b, ptr[ix.buffer], ix, indices, st), typ=I64)
                at = moved(b, at, j, bound, stride, FLOAT[v.dtype])
            return at

        def masked_load(v, walk):
            """0 outside the region; inside, the load at the index (clamped to the region,
            so no address outside the buffer is ever formed)."""
            lead = len(k.domain) - len(v.shape)
            inside, saved = None, list(indices)
            for d, lo, count in v.mask:
                c = where[lead + d]
                ok = b.icmp_unsigned("<", b.sub(indices[c], ir.Constant(I64, lo)),
                                     ir.Constant(I64, count))
                indices[c] = b.select(ok, indices[c], ir.Constant(I64, lo))
                inside = ok if inside is None else b.and_(inside, ok)
            val = load(b, address(v, walk), v.dtype, ty)
            indices[:] = saved
            return b.select(inside, val, ir.Constant(ty, 0.0))

        def combine(op, rty, acc, val):
            if op == "sum":
                return b.fadd(acc, val)
            if op == "prod":
                return b.fmul(acc, val)
            # NaN-propagating, as numpy's amax and torch.amax
            name = "llvm.maximum" if op == "amax" else "llvm.minimum"
            return b.call(self._intrinsic(name, rty, 2), [acc, val])

        def body(tag, partial=None, lane=None):
            """One element's loads, members, stores and accumulations at ``indices``;
            with ``partial``, reductions along the innermost axis go to lane ``lane``."""
            loaded = {}
            for (kind, i, walk) in accesses:
                if kind == "load":
                    v = k.loads[i]
                    loaded[i] = masked_load(v, walk) if v.mask else \
                        load(b, address(v, walk), v.dtype, ty)
            result = self._members(b, k, ty, loaded, tag) if sk is None else \
                self._sympy_members(b, sk, ty, loaded)
            for (kind, i, walk) in accesses:
                if kind == "store":
                    v = k.stores[i]
                    val = _convert(b, result(i), FLOAT[v.dtype])
                    b.store(val, address(v, walk))
                elif kind == "scatter":         # a fused scatter_add: out[i(b), r] += value
                    member, v, _ = k.scatters[i]
                    there = address(v, walk)
                    val = _convert(b, result(member), FLOAT[v.dtype])
                    b.store(b.fadd(b.load(there, typ=FLOAT[v.dtype]), val), there)
                elif kind == "reduce":
                    r = k.reductions[i]
                    rty = FLOAT[r.out.dtype]
                    at = b.gep(partial[i], [lane], source_etype=rty) if i in (partial or ()) \
                        else address(r.out, walk)
                    val = _convert(b, result(i), rty)
                    b.store(combine(r.op, rty, b.load(at, typ=rty), val), at)

        if lanes == 1:
            hints, self.calls_libm = [], False
            with loop_nest(b, shape, "i", hints) as ix:     # (hints are read at its end)
                indices[:] = ix
                body("")
                hints += self._loop_hints(k, shape[-1] if shape else 1, self.calls_libm)
            b.ret_void()
            return fn, buffers

        # A sum along the innermost axis, in lanes: element j·lanes + l adds to lane l, and
        # the lanes are summed in a fixed tree after the axis.  The order is written here,
        # not left to the loop vectoriser (which reorders a loop's sum by the rest of its
        # body, so the same sum in two entries differed), and the lanes are independent
        # chains it turns into vectors side by side.
        n = shape[-1]
        partial = {}
        with b.goto_entry_block():
            for i in along:
                partial[i] = b.alloca(FLOAT[k.reductions[i].out.dtype], lanes, name=f"lanes{i}")
        with loop_nest(b, shape[:-1], "o") as outer:
            for i in along:
                rty = FLOAT[k.reductions[i].out.dtype]
                for lane in range(lanes):
                    b.store(ir.Constant(rty, REDUCTION_START[k.reductions[i].op]),
                            b.gep(partial[i], [ir.Constant(I64, lane)], source_etype=rty))
            with loop(b, n // lanes, "j") as j:
                with loop(b, lanes, "l") as lane:
                    indices[:] = [*outer, b.add(b.mul(j, ir.Constant(I64, lanes)), lane)]
                    body("", partial, lane)
            if n % lanes:
                with loop(b, n % lanes, "r") as lane:
                    indices[:] = [*outer, b.add(ir.Constant(I64, n - n % lanes), lane)]
                    body("r", partial, lane)
            indices[:] = [*outer, ir.Constant(I64, 0)]
            for (kind, i, walk) in accesses:
                if kind == "reduce" and i in along:
                    r = k.reductions[i]
                    rty = FLOAT[r.out.dtype]
                    vals = [b.load(b.gep(partial[i], [ir.Constant(I64, lane)], source_etype=rty),
                                   typ=rty) for lane in range(lanes)]
                    while len(vals) > 1:
                        vals = [combine(r.op, rty, vals[q], vals[q + 1])
                                for q in range(0, len(vals), 2)]
                    at = address(r.out, walk)
                    b.store(combine(r.op, rty, b.load(at, typ=rty), vals[0]), at)
        b.ret_void()
        return fn, buffers

    def _loop_hints(self, k: Kernel, extent: int, calls: bool = False) -> tuple:
        """What the loop vectoriser is told about ``k``'s innermost loop (of ``extent``
        iterations): its width and interleaving, and for a body that ``calls`` libm its
        last iteration masked (TAIL_FOLDED).  None changes a result: elementwise lanes are
        independent, and sums write their order out (see ``kernel``)."""
        return self._width(k, extent) + self._interleave(k, extent, calls) + \
            ((TAIL_FOLDED,) if calls else ())

    def _width(self, k: Kernel, extent: int) -> tuple:
        """The host's vector width for a long body whose loads and stores are all
        contiguous or broadcast: told, the loop vectoriser builds that one plan instead
        of one per width to compare costs, which was most of LLVM's time on W5's
        unrolled gradient (its choice was this width).  Results do not depend on it."""
        lanes = self._vector_lanes(k)
        if len(k.members) < 32 or extent < lanes or k.scatters or any(
                v.mask or v.indirect for v in k.loads.values()):
            return ()
        return (("llvm.loop.vectorize.width", lanes),)

    def _interleave(self, k: Kernel, extent: int, calls: bool = False) -> tuple:
        """Vector iterations to run side by side.  LLVM interleaves only loops of under
        ~20 instructions, but a long body is often one chain of dependent operations per
        element (an unrolled recurrence, a step's value and its tangent): run alone, each
        vector waits on its own latency (sin's ~20 ns) with the core mostly idle.  Side
        by side as far as the registers hold every copy's live values, the 1,000-step
        chain's forward pass runs 2.6x faster and its JVP 2.1x.  Only where the body
        computes much for what it loads and stores: a VJP's loops store each step's
        value for the reverse pass, wait on memory, gain nothing and took LLVM 4x as long
        to compile (W5's unrolled gradient +0.9 s).  ``calls``: the body calls libm, and
        may run LIBM_INTERLEAVE side by side; its constants are not counted, as every
        call leaves them to be read from memory again."""
        if self.operations is None or k.scatters or \
                len(k.members) < 16 * max(1, len(k.loads) + len(k.stores)):
            return ()       # small, or busy with memory: side by side gains nothing there
        peak = _peak_live(self.operations(k), set(k.loads), set(k.stores))
        registers = 32 if self.vector_bits >= 512 else 16     # AVX-512's, else AVX's or SSE's
        count, constants = (LIBM_INTERLEAVE, 0) if calls else (4, len(k.consts))
        while count > 1 and (count * peak + constants > registers
                             or count * self._vector_lanes(k) > extent):
            count //= 2
        return (("llvm.loop.interleave.count", count),) if count > 1 else ()

    def _vector_lanes(self, k: Kernel) -> int:
        return self.vector_bits // (8 * k.dtype.itemsize)

    def _sympy_members(self, b, sk, ty, loaded):
        """The kernel's members from its SymPy assignments (``ExprLowering``); returns
        member id -> its value."""
        env = {sp.Symbol(f"x{i}", real=True): value for i, value in loaded.items()}
        lowering = ExprLowering(self, b, ty, env)
        for sym, expr in sk.assignments:
            env[sym] = lowering(expr)
        return lambda i: lowering(sk.results[i])

    def _members(self, b, k: Kernel, ty, loaded, tag=""):
        """The kernel's members written from their operators' patterns (``member_ir``),
        placed at the builder's position as IR text; returns member id -> its value."""
        value = {i: v.get_reference() for i, v in loaded.items()}
        lines = self._member_lines(k, ty, value, tag)
        if lines:           # none when every result is a load or a constant
            b.insert_text("\n  ".join(lines))
        reduced = {i: r.operand for i, r in k.reductions.items()}    # a sum's is its operand's
        return lambda i: irtext.Value(ty, value[reduced.get(i, i)])

    def _member_lines(self, k: Kernel, ty, value: dict, tag: str = "") -> list:
        """Each member of ``k`` as its pattern's lines, filled in from ``value`` (loaded
        operands by node id, as IR references), which gets the members' values."""
        lines = []
        consts = {i: ir.Constant(ty, float(c)).get_reference() for i, c in k.consts.items()}
        value.update(consts)
        # (op, fixed) -> (its lines, its result, or the result's suffix after "%{r}" where
        # that is all it is: a string join instead of a format); declarations made once
        patterns = {}
        append = lines.append
        for m, op, args in self.operations(k):
            fixed = ()
            if consts:
                for j, a in enumerate(args):
                    if a in consts:
                        fixed += ((j, k.consts[a]),)
            pattern = patterns.get((op, fixed))
            if pattern is None:
                made = member_ir(op, ty, self.arith, fixed)
                for decl_name, decl_type in made.declarations:
                    self.module.declare(decl_name, decl_type)
                    self.calls_libm |= not decl_name.startswith("llvm.")
                tail = made.result[4:]
                pattern = patterns[op, fixed] = (
                    made.lines, made.result,
                    tail if made.result.startswith("%{r}") and "{" not in tail else None)
            text, result, suffix = pattern
            operands = [value[a] for a in args]
            name = f"m{m}{tag}"
            if text:
                append(text.format(*operands, r=name))
            value[m] = "%" + name + suffix if suffix is not None else \
                result.format(*operands, r=name)
        return lines

    # ---- a straight-line scalar kernel, written from member patterns ----------------------
    def written(self, name, k: Kernel):
        """The kernel's step as IR text: each member is its operator's pattern (see
        ``member_ir``) filled in with its operands' values, between the loads of the values
        it reads and the stores of those it writes."""
        fn = self._step_fn(name, [None, None], _Written)
        for arg, arg_name in zip(fn.args, ("table", "workspace")):
            arg.name = arg_name
        ty = FLOAT[k.dtype]
        lines, buffers = [], {}

        def address(v, tag):
            if v.buffer not in buffers:
                kind, at = self._places[v.buffer]
                if kind == "table":
                    lines.append(f'%b{v.buffer}.p = getelementptr ptr, ptr %"table", i64 {at}')
                    lines.append(f"%b{v.buffer} = load ptr, ptr %b{v.buffer}.p")
                else:
                    lines.append(f'%b{v.buffer} = getelementptr i8, ptr %"workspace", i64 {at}')
                buffers[v.buffer] = f"%b{v.buffer}"
            if not v.offset:
                return buffers[v.buffer]
            lines.append(f"%{tag}.a = getelementptr {FLOAT[v.dtype]}, ptr {buffers[v.buffer]}, "
                         f"i64 {v.offset}")
            return f"%{tag}.a"

        value = {}
        for i, v in k.loads.items():
            at = address(v, f"x{i}")
            lines.append(f"%x{i}.v = load {FLOAT[v.dtype]}, ptr {at}")
            value[i] = _written_convert(lines, f"%x{i}.v", FLOAT[v.dtype], ty, f"x{i}")
        lines += self._member_lines(k, ty, value)
        for i, v in k.stores.items():
            stored = _written_convert(lines, value[i], ty, FLOAT[v.dtype], f"s{i}")
            lines.append(f"store {FLOAT[v.dtype]} {stored}, ptr {address(v, f's{i}')}")
        fn.body = "".join(f"  {line}\n" for line in lines)
        return fn, sorted({v.buffer for v in [*k.loads.values(), *k.stores.values()]})

    # ---- matmul: C[i, j] = Σ_p A[i, p]·B[p, j] ----------------------------------------------
    def matmul(self, name, step: MatMul):
        a, bv, c = step.a, step.b, step.out
        (m, kk), (_, n) = a.shape, bv.shape
        layouts = (_blas_layout(a), _blas_layout(bv))
        if (self.blas and m * n * kk >= BLAS_MIN_WORK and None not in layouts
                and a.dtype == bv.dtype == c.dtype):
            return self._gemm(name, step, layouts)
        return self._matmul_loops(name, step)

    def _gemm(self, name, step, layouts):
        a, bv, c = step.a, step.b, step.out
        (m, kk), (_, n) = a.shape, bv.shape
        fn, buffers, ptr, b = self._begin(name, [a, bv, c])
        ty = FLOAT[c.dtype]
        gemm_name = "__symgrad_dgemm" if c.dtype == np.float64 else "__symgrad_sgemm"
        gemm = self.module.declare(gemm_name, ir.FunctionType(
            ir.VoidType(), [I32, I32, I32, I64, I64, I64, ty, PTR, I64, PTR, I64, ty, PTR, I64]))
        (ta, lda), (tb, ldb) = layouts
        i32, i64 = (lambda v: ir.Constant(I32, v)), (lambda v: ir.Constant(I64, v))

        def start(view):
            return element(b, ptr[view.buffer], view, (), ())
        b.call(gemm, [i32(CBLAS_ROW_MAJOR), i32(ta), i32(tb), i64(m), i64(n), i64(kk),
                      ir.Constant(ty, 1.0), start(a), i64(lda), start(bv), i64(ldb),
                      ir.Constant(ty, 0.0), start(c), i64(n)])
        b.ret_void()
        return fn, buffers

    def _matmul_loops(self, name, step: MatMul):
        a, bv, c = step.a, step.b, step.out
        fn, buffers, ptr, b = self._begin(name, [a, bv, c])
        ty = FLOAT[c.dtype]
        (m, kk), (_, n) = a.shape, bv.shape

        def at(view, i, j):
            return element(b, ptr[view.buffer], view, (i, j), view.strides)

        if m * n == 0:                      # zero-size operands: an empty product
            b.ret_void()
            return fn, buffers
        fill(b, ptr[c.buffer], m * n, ir.Constant(ty, 0.0))
        if kk == 0:
            b.ret_void()
            return fn, buffers
        with loop(b, m, "i") as i:
            with loop(b, kk, "p") as p:
                aval = _convert(b, b.load(at(a, i, p), typ=FLOAT[a.dtype]), ty)
                with loop(b, n, "j") as j:
                    bval = _convert(b, b.load(at(bv, p, j), typ=FLOAT[bv.dtype]), ty)
                    where = at(c, i, j)
                    prod = b.fmul(aval, bval, flags=REDUCE)
                    b.store(b.fadd(b.load(where, typ=ty), prod, flags=REDUCE), where)
        b.ret_void()
        return fn, buffers


    # ---- assemble: fill a buffer, copy each piece into its region ---------------------------
    def assemble(self, name, step: Assemble):
        out = step.out
        fn, buffers, ptr, b = self._begin(name, [out, *(src for src, _ in step.pieces)])
        ty = FLOAT[out.dtype]
        if step.fill is not None:
            fill(b, ptr[out.buffer], math.prod(out.shape), ir.Constant(ty, step.fill))
        for src, dst in step.pieces:
            if math.prod(src.shape) == 0:
                continue
            shape, (s_st, d_st), _ = collapse(src.shape, [src.strides, dst.strides])
            with loop_nest(b, shape, "i") as indices:
                value = b.load(element(b, ptr[src.buffer], src, indices, s_st),
                               typ=FLOAT[src.dtype])
                b.store(_convert(b, value, ty), element(b, ptr[dst.buffer], dst, indices, d_st))
        b.ret_void()
        return fn, buffers

    # ---- gather and scatter-add through index arrays ------------------------------------
    def gather(self, name, step: Gather):
        dense, indexed = (step.src, step.out) if step.scatter else (step.out, step.src)
        k = len(step.indices)
        fn, buffers, ptr, b = self._begin(name, [step.src, step.out, *step.indices])
        ty = FLOAT[step.out.dtype]
        if step.scatter:
            fill(b, ptr[step.out.buffer], math.prod(step.out.shape), ir.Constant(ty, 0.0))
        domain = dense.shape
        if math.prod(domain) == 0:
            b.ret_void()
            return fn, buffers
        nb = len(domain) - (len(indexed.shape) - k)       # the index arrays' dims
        rest = (0,) * nb + tuple(indexed.strides[k:])
        index_strides = [v.broadcast_to(domain[:nb]) + (0,) * (len(domain) - nb)
                         for v in step.indices]
        shape, (dense_st, rest_st, *idx_st), _ = collapse(
            domain, [dense.strides, rest, *index_strides])
        with loop_nest(b, shape, "i") as indices:
            there = element(b, ptr[indexed.buffer], indexed, indices, rest_st)
            for v, st, n, stride in zip(step.indices, idx_st, step.bounds, indexed.strides):
                j = b.load(element(b, ptr[v.buffer], v, indices, st), typ=I64)
                there = moved(b, there, j, n, stride, FLOAT[indexed.dtype])
            here = element(b, ptr[dense.buffer], dense, indices, dense_st)
            if step.scatter:
                value = _convert(b, b.load(here, typ=FLOAT[dense.dtype]), ty)
                b.store(b.fadd(b.load(there, typ=ty), value), there)
            else:
                value = b.load(there, typ=FLOAT[indexed.dtype])
                b.store(_convert(b, value, ty), here)
        b.ret_void()
        return fn, buffers

    # ---- cumsum: a running sum along one axis, the other axes outside ----------------------
    def scan(self, name, step: Scan):
        src, out, axis = step.src, step.out, step.axis
        fn, buffers, ptr, b = self._begin(name, [src, out])
        ty = FLOAT[out.dtype]
        if math.prod(src.shape) == 0:
            b.ret_void()
            return fn, buffers
        # the scanned axis last, innermost: ``collapse`` never merges it with the others
        outer = [d for d in range(len(src.shape)) if d != axis] + [axis]
        shape, (src_st, out_st), where = collapse(
            tuple(src.shape[d] for d in outer),
            [[src.strides[d] for d in outer], [out.strides[d] for d in outer]],
            keep={len(outer) - 1})
        inner = where.get(len(outer) - 1)
        with loop_nest(b, shape[:inner] if inner is not None else shape, "o") as indices:
            pre = b.block
            with loop(b, src.shape[axis], "k") as i:
                acc = b.phi(ty, name="acc")
                acc.add_incoming(ir.Constant(ty, 0.0), pre)
                at = [*indices, i]
                value = _convert(b, b.load(element(b, ptr[src.buffer], src, at, src_st),
                                           typ=FLOAT[src.dtype]), ty)
                total = b.fadd(acc, value)
                b.store(total, element(b, ptr[out.buffer], out, at, out_st))
                acc.add_incoming(total, b.block)
        b.ret_void()
        return fn, buffers

    # ---- a loop: its body program run once per step ------------------------------------------
    def loop(self, name, step: Loop):
        """``i32 name(buffers…)``: the body is a function ``i32 (table, workspace)`` of its own,
        called once per step with the table pointing into this step's rows; one workspace
        serves every step.  Returns 1 when that workspace cannot be allocated."""
        body = self._body(f"{name}.body", step.body)
        views = [*step.inits, *step.xs, *step.consts, step.out]
        buffers = sorted({v.buffer for v in views})
        fn = self._fn(name, I32, [PTR] * len(buffers))
        fn.linkage = "internal"
        fn.attributes.add("noinline")
        fn.attributes.add("nounwind")
        ptr = dict(zip(buffers, fn.args))
        b = irtext.Builder(fn.append_basic_block("entry"))

        def at(view, elements):       # the address ``elements`` on from the view's start
            size = view.dtype.itemsize
            offset = b.add(b.mul(elements, ir.Constant(I64, size)),
                           ir.Constant(I64, view.offset * size)) \
                if isinstance(elements, irtext.Value) else \
                ir.Constant(I64, (view.offset + elements) * size)
            return b.gep(ptr[view.buffer], [offset], source_etype=I8)

        n_in = len(step.body.inputs)
        slots = n_in + len(step.body.outputs)
        table = b.alloca(PTR, slots, name="table")

        def put(slot, pointer):
            b.store(pointer, b.gep(table, [ir.Constant(I64, slot)], source_etype=PTR))
        offsets, total = _temporaries(name, step.body)
        workspace = self._malloc(b, total) if total else ir.Constant(PTR, None)
        n_c, n_x = len(step.inits), len(step.xs)
        for k, v in enumerate(step.consts):
            put(n_c + n_x + k, at(v, 0))
        width = sum(size for _, size in step.parts)
        length = ir.Constant(I64, step.length)
        failed = fn.append_basic_block("failed")
        with loop(b, step.length, "t") as t:
            s = b.sub(b.sub(length, ir.Constant(I64, 1)), t) if step.reverse else t
            here = s
            before = b.add(s, ir.Constant(I64, 1 if step.reverse else -1))
            if step.ring:       # two rows in turn (before is never read at t = 0)
                here = b.urem(s, ir.Constant(I64, 2))
                before = b.urem(before, ir.Constant(I64, 2))
            row = b.mul(here, ir.Constant(I64, width))
            previous = b.mul(before, ir.Constant(I64, width))
            first = b.icmp_unsigned("==", t, ir.Constant(I64, 0))
            for j, v in enumerate(step.inits):
                entering = at(step.out, b.add(previous, ir.Constant(I64, step.parts[j][0])))
                put(j, b.select(first, at(v, 0), entering))
            for j, v in enumerate(step.xs):
                put(n_c + j, at(v, b.mul(s, ir.Constant(I64, math.prod(v.shape[1:])))))
            written = {}
            for (offset, _), u in zip(step.parts, step.first):
                if u not in written:
                    written[u] = at(step.out, b.add(row, ir.Constant(I64, offset)))
                    put(n_in + u, written[u])
            status = b.call(body, [table, workspace])
            go = fn.append_basic_block("go")
            b.cbranch(b.icmp_signed("!=", status, ir.Constant(I32, 0)), failed, go)
            b.position_at_end(go)
            done = set()
            for (offset, size), u in zip(step.parts, step.first):
                if u in done:          # an output given twice: copied from its first place
                    b.call(self._memcpy(), [
                        at(step.out, b.add(row, ir.Constant(I64, offset))), written[u],
                        ir.Constant(I64, size * step.out.dtype.itemsize),
                        ir.Constant(ir.IntType(1), 0)])
                done.add(u)
        if total:
            self._free(b, workspace)
        b.ret(ir.Constant(I32, 0))
        b.position_at_end(failed)
        if total:
            self._free(b, workspace)
        b.ret(ir.Constant(I32, 1))
        return fn, buffers

    def _body(self, name, prog: Program):
        """``i32 name(ptr table, ptr workspace)``: a loop body's steps over the table's
        buffers and the temporaries in the caller's workspace."""
        fn = self._fn(name, I32, [PTR, PTR])
        fn.linkage = "internal"
        fn.attributes.add("nounwind")
        b = irtext.Builder(fn.append_basic_block("entry"))
        offsets, _ = _temporaries(name, prog)
        b.ret(self._run(b, name, prog, fn.args[0], fn.args[1], offsets))
        return fn

    def _memcpy(self):
        return self.module.declare("llvm.memcpy.p0.p0.i64", ir.FunctionType(
            ir.VoidType(), [PTR, PTR, I64, ir.IntType(1)]))


# kernels of one element and at most this many members are written in their caller
INLINE_MEMBERS = 4


def _inlined(step) -> bool:
    """Whether a step is written in its caller (``Lowerer._inline``, ``_inline_assemble``):
    a kernel of one element and a few members, its loads float or bool and read plainly,
    with no reductions or scatters; a buffer assembled from single float elements (filled
    first only if it is one element itself)."""
    if isinstance(step, Kernel):
        return math.prod(step.domain) == 1 and len(step.members) <= INLINE_MEMBERS and \
            not step.reductions and not step.scatters and all(
                v.dtype.kind in "fb" and not v.mask and not v.indirect
                for v in step.loads.values())
    if isinstance(step, Assemble):
        return (step.fill is None or math.prod(step.out.shape) == 1) and all(
            math.prod(src.shape) == 1 and src.dtype.kind == "f" for src, _ in step.pieces)
    return False


def _single(b, pointer, view):
    """The address of the one element of ``view`` (its buffer's pointer by ``pointer``)."""
    return element(b, pointer(view.buffer), view, (), ())


def _temporaries(name, prog: Program):
    """Where each temporary buffer starts in the workspace, and the workspace's size."""
    offsets, total = [], 0
    for k, buf in enumerate(prog.buffers):
        if buf.kind == "temp":
            start, total = _next_temporary(buf, total)
            offsets.append((k, start))
    if total >= 2**62:   # a 64-bit size must not wrap (each buffer is checked smaller)
        raise MemoryError(f"{name}: the temporaries need {total:.3g} bytes")
    return offsets, total


def _table_place(buf, n_in: int) -> tuple:
    """Where an input's or output's buffer is found: its slot of the pointer table
    (the inputs, then the outputs)."""
    return ("table", buf.index + (n_in if buf.kind == "output" else 0))


def _next_temporary(buf, total: int) -> tuple:
    """(where temporary ``buf`` starts, the workspace's size with it) after ``total``
    bytes: tensors start on a cache line (vector loads); scalars are packed, so the
    values a scalar program passes between its functions share cache lines
    (Lennard-Jones N=60: 96 KB of them instead of 770 KB)."""
    align = ALIGN if buf.size > 1 else buf.dtype.itemsize
    start = -(-total // align) * align
    return start, start + buf.size * buf.dtype.itemsize


def _last_dim(domain: tuple):
    """The dim of ``domain`` that is the innermost loop when none is merged (size-1 dims
    are dropped), or None."""
    dims = [d for d, n in enumerate(domain) if n != 1]
    return dims[-1] if dims else None


def _lanes(k: Kernel, red_strides: dict) -> tuple:
    """(lanes, the reductions along the kernel's innermost axis): the lanes those are
    summed in (see ``Lowerer.kernel``); 1 (in order) for short axes, where lanes would
    cost more than they give, and in kernels with a fused scatter."""
    d = _last_dim(k.domain)
    along = set() if d is None or k.scatters else \
        {i for i, st in red_strides.items() if st[d] == 0}
    n = k.domain[d] if along else 0
    return (32 if n >= 128 else 16 if n >= 32 else 1), along


def _reduction_strides(domain, r):
    """Strides, in the domain, of the accumulator a sum writes to (0 on summed axes)."""
    out_strides = iter(r.out.strides)
    strides = []
    for d in range(len(domain)):
        if d in r.axes:
            strides.append(0)
            if r.keepdims:
                next(out_strides)
        else:
            strides.append(next(out_strides))
    return tuple(strides)


def _convert(b, value, ty):
    if value.type == ty:
        return value
    if isinstance(ty, ir.DoubleType):
        return b.fpext(value, ty)
    return b.fptrunc(value, ty)


class ExprLowering:
    """Scalar sympy → IR values (``irtext``); one method per sympy construct."""

    def __init__(self, lowerer: Lowerer, b: irtext.Builder, ty, env: dict):
        self.lowerer, self.b, self.ty, self.env = lowerer, b, ty, env
        self.char = "d" if isinstance(ty, ir.DoubleType) else "f"
        self.arith = lowerer.arith
        self.memo = {}

    def __call__(self, expr):
        if expr in self.env:
            return self.env[expr]
        if expr in self.memo:
            return self.memo[expr]
        method = getattr(self, "_" + type(expr).__name__, None)
        if method is None:
            if expr.is_Number:
                method = self._Number
            elif _libm_name(expr) is not None:
                method = self._function
            else:
                method = self._rewritten
        value = method(expr)
        self.memo[expr] = value
        return value

    def _rewritten(self, e):
        """A function sympy's own evaluation introduced (sinh from exponentials, …):
        lowered through its form in exp and log, which every function here has."""
        for target in (sp.exp, sp.log):
            other = e.rewrite(target)
            if other != e and type(other) is not type(e):
                return self(other)
        raise NotImplementedError(f"no LLVM lowering for {type(e).__name__}: {e}")

    def const(self, x):
        return ir.Constant(self.ty, float(x))

    def _Number(self, e):
        return self.const(e)

    def _Symbol(self, e):
        raise KeyError(f"symbol {e} has no value in this kernel")

    def _Add(self, e):
        b = self.b
        pos, neg = [], []
        for t in e.args:  # a − b rather than a + (−1)·b
            coeff, rest = t.as_coeff_Mul()
            if coeff.is_negative and coeff.is_finite:
                neg.append(rest if coeff == -1 else (-coeff) * rest)
            else:
                pos.append(t)
        acc = None
        for t in pos:
            v = self(t)
            acc = v if acc is None else b.fadd(acc, v, flags=self.arith)
        for t in neg:
            v = self(t)   # −a − b, not 0 − a − b: the sign of a zero result stays right
            acc = b.fneg(v) if acc is None else b.fsub(acc, v, flags=self.arith)
        return acc

    def _Mul(self, e):
        b = self.b
        num, den, sign = [], [], False
        for f in e.args:
            if f == -1:
                sign = not sign
            elif isinstance(f, sp.Pow) and f.exp.is_Number and f.exp.is_negative:
                den.append(f.base ** (-f.exp))
            else:
                num.append(f)
        acc = None
        for f in num:
            v = self(f)
            acc = v if acc is None else b.fmul(acc, v, flags=self.arith)
        if den:
            d = None
            for f in den:
                v = self(f)
                d = v if d is None else b.fmul(d, v, flags=self.arith)
            acc = b.fdiv(acc if acc is not None else self.const(1.0), d, flags=self.arith)
        if sign:
            acc = b.fneg(acc)
        return acc

    def _Pow(self, e):
        b = self.b
        base, exp = e.args
        if exp == sp.S.Half:
            return self._call_intrinsic("llvm.sqrt", base)
        if exp == -sp.S.Half:
            return b.fdiv(self.const(1.0), self._call_intrinsic("llvm.sqrt", base))
        if exp.is_Number and float(exp).is_integer() and abs(float(exp)) <= 64:
            n = int(exp)
            x = self(base)
            result = _powi(b, x, abs(n), self.const(1.0), self.arith)
            return b.fdiv(self.const(1.0), result) if n < 0 else result
        return self._libm("pow", base, exp)

    def _call_intrinsic(self, name, arg):
        return self.b.call(self.lowerer._intrinsic(name, self.ty), [self(arg)],
                           fastmath=self.arith)

    def _libm(self, name, *args):
        fn = self.lowerer._extern(name + ("f" if self.char == "f" else ""), self.ty, len(args))
        self.lowerer.calls_libm = True
        return self.b.call(fn, [self(a) for a in args])

    def _function(self, e):
        """The generic rule: a SymPy function whose operator names a C math function
        (the table's ``libm``) is a call to it, ``sinf`` etc. for float32."""
        return self._libm(_libm_name(e), *e.args)

    def _Abs(self, e): return self._call_intrinsic("llvm.fabs", e.args[0])

    def _minmax(self, e, name):
        args = [self(a) for a in e.args]
        fn = self.lowerer._intrinsic(name, self.ty, 2)
        acc = args[0]
        for v in args[1:]:
            acc = self.b.call(fn, [acc, v])  # NaN-propagating, as torch.maximum
        return acc

    def _Max(self, e): return self._minmax(e, "llvm.maximum")
    def _Min(self, e): return self._minmax(e, "llvm.minimum")

    def _select(self, cond, a, b, yes, no):
        """``yes if a <cond> b else no``; ordered compare: false when either is NaN."""
        return self.b.select(self.b.fcmp_ordered(cond, a, b), yes, no)

    def _sign(self, e):
        # ±0 stay themselves, NaN gives 0 (PyTorch's sign)
        x, zero = self(e.args[0]), self.const(0.0)
        mid = self._select("==", x, zero, x, zero)
        pos = self._select(">", x, zero, self.const(1.0), mid)
        return self._select("<", x, zero, self.const(-1.0), pos)

    def _Heaviside(self, e):
        # numpy's heaviside: NaN stays NaN
        x, zero = self(e.args[0]), self.const(0.0)
        h0 = self(e.args[1]) if len(e.args) > 1 else self.const(0.5)
        mid = self._select("==", x, zero, h0, x)
        pos = self._select(">", x, zero, self.const(1.0), mid)
        return self._select("<", x, zero, zero, pos)

    # the masks derivatives are made of (ops.py): PyTorch's values at ties, zeros, NaN
    def _step(self, e):
        x = self(e.args[0])
        return self._select("<=", x, self.const(0.0), self.const(0.0), self.const(1.0))

    def _tie(self, e):
        a, b = self(e.args[0]), self(e.args[1])
        mid = self._select("==", a, b, self.const(0.5), self.const(1.0))
        return self._select("<", a, b, self.const(0.0), mid)

    def _xmul(self, e):
        a, y = self(e.args[0]), self(e.args[1])
        product = self.b.fmul(a, y, flags=self.arith)
        return self._select("==", a, self.const(0.0), self.const(0.0), product)

    # ---- comparisons and selection (ops.py's masks) --------------------------------------
    def _nonzero(self, e):          # NaN is nonzero, as bool(nan) in numpy
        return self.b.fcmp_unordered("!=", self(e), self.const(0.0))

    def _mask(self, bit):
        return self.b.select(bit, self.const(1.0), self.const(0.0))

    def _compare(self, e, op):
        a, b = (self(x) for x in e.args)
        bit = self.b.fcmp_unordered(op, a, b) if op == "!=" else \
            self.b.fcmp_ordered(op, a, b)
        return self._mask(bit)

    def _lt(self, e): return self._compare(e, "<")
    def _le(self, e): return self._compare(e, "<=")
    def _gt(self, e): return self._compare(e, ">")
    def _ge(self, e): return self._compare(e, ">=")
    def _eq(self, e): return self._compare(e, "==")
    def _ne(self, e): return self._compare(e, "!=")

    def _logical_and(self, e):
        return self._mask(self.b.and_(self._nonzero(e.args[0]), self._nonzero(e.args[1])))

    def _logical_or(self, e):
        return self._mask(self.b.or_(self._nonzero(e.args[0]), self._nonzero(e.args[1])))

    def _logical_not(self, e):
        return self._mask(self.b.not_(self._nonzero(e.args[0])))

    def _where(self, e):
        return self.b.select(self._nonzero(e.args[0]), self(e.args[1]), self(e.args[2]))

    def _stop_gradient(self, e):
        return self(e.args[0])

    def _softplus(self, e):
        x = self(e.args[0])
        smooth = self._libm("log1p", sp.exp(e.args[0]))
        return self._select(">", x, self.const(20.0), x, smooth)

    def _pow_log(self, e):
        a, p = self(e.args[0]), self(e.args[1])
        log = self._libm("log", e.args[0])
        zero = self.const(0.0)
        masked = self.b.and_(self.b.fcmp_ordered("==", a, zero),
                             self.b.fcmp_ordered(">=", p, zero))
        return self.b.select(masked, zero, log)


def _libm_name(e):
    op = SYMPY_OPS.get(type(e))
    return ELEMENTWISE[op].libm if op is not None else None


def _powi(b, x, n, one, flags):
    """x**n by repeated squaring, n ≥ 0."""
    result, base = None, x
    while n:
        if n & 1:
            result = base if result is None else b.fmul(result, base, flags=flags)
        n >>= 1
        if n:
            base = b.fmul(base, base, flags=flags)
    return one if result is None else result


# ---- member patterns: kernels' members without SymPy or a builder ------------------------
# A graph of scalars compiles as tens of thousands of one-operation members.  Where the
# kernels are the graph's own operations (faithful lowering, the default), a member's IR
# is its operator's formula lowered on its operands, the same few instructions each time:
# ExprLowering (the one lowering rule) lowers each (operator, type) once into a pattern,
# and a kernel's members are written by filling patterns in — about 2 µs a member, against
# ~40 µs for a SymPy expression lowered through llvmlite's objects.  The code is the same:
# straight-line scalar steps are all text (``written``), loop bodies pattern text between
# the builder's loads and stores (``_members``).

@dataclass(frozen=True)
class MemberIR:
    """An operator's instructions as format strings: ``{0}``, ``{1}``, ``{2}`` stand for
    the operands' values, ``{r}`` for the member's name prefix."""
    lines: str
    result: str
    declarations: tuple      # (name, function type) of the functions the lines call


_patterns: dict = {}
_LOCAL = re.compile(r'%"\.(\d+)"')
_OPERAND = re.compile(r'%"a(\d)"')


def member_ir(op: str, ty, arith: tuple, fixed: tuple = ()) -> MemberIR:
    """The pattern of operator ``op`` on values of type ``ty``.  ``fixed``: (operand
    position, constant) pairs the formula is specialised on — the exponents of its powers
    (x**2 lowers to x·x and x**0.5 to sqrt, as the SymPy path lowers them); other
    constant operands are filled in as constants."""
    entry = ELEMENTWISE[op]
    fixed = tuple((j, c) for j, c in fixed if j in _exponent_slots(entry))
    key = (op, str(ty), arith, fixed)
    hit = _patterns.get(key)
    if hit is not None and hit[0] is entry:       # an operator re-declared: made again
        return hit[1]
    module = irtext.Module("pattern")
    lowerer = Lowerer(module)
    lowerer.arith = arith
    fn = irtext.Function(module, ir.FunctionType(ty, [ty] * entry.arity), "member")
    for j, arg in enumerate(fn.args):
        arg.name = f"a{j}"
    formula = entry.formula
    if fixed:
        with sp.evaluate(False):
            formula = formula.xreplace({OPERANDS[j]: sympy_number(c) for j, c in fixed})
    b = irtext.Builder(fn.append_basic_block("entry"))
    result = ExprLowering(lowerer, b, ty, dict(zip(OPERANDS, fn.args)))(formula)

    def pattern(text):
        text = text.replace("{", "{{").replace("}", "}}")
        return _OPERAND.sub(r"{\1}", _LOCAL.sub(r"%{r}.\1", text))
    lines = "\n  ".join(pattern(str(i)) for i in fn.blocks[0].lines)
    made = MemberIR(lines, pattern(result.get_reference()),
                    tuple((g.name, g.function_type) for g in module.globals.values()
                          if g is not fn))
    module.release()        # (IR objects refer to each other: see Module.release)
    _patterns[key] = (entry, made)
    return made


_exponents: dict = {}


def _exponent_slots(entry) -> frozenset:
    """Operand positions that are a power's exponent in ``entry``'s formula (found once
    per operator: a member with a constant operand asks)."""
    hit = _exponents.get(entry.name)
    if hit is None or hit[0] is not entry:
        hit = _exponents[entry.name] = (entry, frozenset(
            j for j, a in enumerate(OPERANDS[:entry.arity])
            for p in entry.formula.atoms(sp.Pow) if p.exp.has(a)))
    return hit[1]


def writable(k: Kernel) -> bool:
    """A kernel ``Lowerer.written`` can write: one element, float loads and stores only."""
    return not k.domain and not k.reductions and not k.scatters and all(
        v.dtype.kind == "f" and not v.mask and not v.indirect
        for v in [*k.loads.values(), *k.stores.values()])


def _written_convert(lines, value, have, want, tag):
    if have == want:
        return value
    op = "fpext" if isinstance(want, ir.DoubleType) else "fptrunc"
    lines.append(f"%{tag}.c = {op} {have} {value} to {want}")
    return f"%{tag}.c"


class _Written(irtext.Function):
    """A function whose body is IR text (``Lowerer.written``)."""
    body = ""

    def __str__(self):
        return self._head("define") + "\n{\nentry:\n" + self.body + "  ret void\n}\n"
