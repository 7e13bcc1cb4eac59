"""graph → reverse graph → kernels → sympy → LLVM IR → JIT: the whole path in one place."""
from __future__ import annotations

import collections
import functools
import threading
import uuid

import dataclasses
import hashlib
import marshal
import math
from dataclasses import dataclass, field

from . import progress
from .backend import EntrySpec, Signature, cache, jit
from .backend.stats import logger, stats
from .graph import Expr, Graph, GraphError, ancestors
from .lower import Lowerer, new_module
from .ops import kind_of
from .schedule import Kernel, Loop, MatMul, depth_first, schedule
from .simplify import SYMPY_BUDGET, to_sympy

log = logger("symgrad.compile")
# Kernel members from which an entry is compiled in parts, LLVM working on one part while
# Python lowers the next.  Parts get LLVM's settings for a module of jit.LARGE_MODULE
# lines, which one module of this many members (1.7-1.8 lines each) got as well.
LARGE_PROGRAM = 12_000
# programs doing more element operations than this per call are compiled optimised at
# once: their quick first tier (no vectoriser) would run several times slower until the
# second is in (W9's forward passes: ~10^4, tiered; W8's chain: 5·10^6, not)
TIER_WORK = 1_000_000


@dataclass
class Entry:
    """One native entry point: the nodes it reads and writes, in pointer-table order."""
    kind: str                # "forward" | "vjp"
    inputs: list             # node ids: the arguments, then the array constants
    outputs: list            # node ids (unique)
    name: str = ""           # its symbol in the module
    address: int = 0
    constants: list = field(default_factory=list)   # the array constants among inputs
    batched: bool = False    # the entry as a native loop over a batch (``Lowerer.batched``)


@dataclass
class CompilePlan:
    """What ``compile`` hands to code generation: the work graph (the user's, plus seeds,
    adjoints and output copies) and the entry points to build from it."""
    graph: Graph             # the user's graph
    work: Graph
    inputs: list             # Exprs of ``work``: the function's parameters
    outputs: list
    wrt: list
    seeds: list
    out_ids: list            # the node holding each output
    grad_ids: list           # the node holding each gradient
    entries: dict = field(default_factory=dict)     # kind -> Entry
    fast_math: bool = False  # let SymPy rewrite algebraically and LLVM contract to FMA
    _patterns: dict = field(default_factory=dict)    # "jacobian"/"hessian" -> Pattern
    tangent_ids: dict = field(default_factory=dict)  # "jvp"/"hvp" -> nodes of J·u, H·u

    def build(self, kind: str) -> "Artifact":
        """Native code for one entry point (called by the compiled function on first use);
        "batch:<kind>" is that entry as a loop over a batch (see ``Lowerer.batched``)."""
        if kind.startswith("batch:"):
            entry = dataclasses.replace(self.entries[kind[6:]], kind=kind, batched=True)
            return build(self.work, [entry], fast_math=self.fast_math)
        return build(self.work, [self.entries[kind]], fast_math=self.fast_math)

    def export_ir(self, name: str) -> tuple[str, dict]:
        return export_ir(self.work, [e for k, e in self.entries.items()
                                     if k in ("forward", "vjp")], name, self.fast_math)

    def add_tangents(self) -> dict:
        """Forward mode, added to the work graph on first use: a tangent input per wrt
        node, the entry "jvp" (outputs and J·u) and, for one scalar output, "hvp" (the
        gradients and H·u, forward over reverse).  Returns the node ids of J·u and H·u."""
        from .autodiff import tangents
        if "jvp" in self.entries:
            return self.tangent_ids
        work = self.work
        ts = [work.input(work.fresh_name(f"tangent_{w.name}"), w.shape, w.dtype) for w in self.wrt]
        ins, t_ids = [i.id for i in self.inputs], [t.id for t in ts]
        ids = {"jvp": _materialised(work, tangents(work, self.outputs, self.wrt, ts))}
        self.entries["jvp"] = _entry(work, "jvp", ins + t_ids,
                                     list(dict.fromkeys(self.out_ids + ids["jvp"])))
        if len(self.outputs) == 1 and self.outputs[0].shape == () and self.seeds:
            grads = [Expr(work, i) for i in self.grad_ids]
            ids["hvp"] = _materialised(work, tangents(work, grads, self.wrt, ts))
            self.entries["hvp"] = _entry(work, "hvp", ins + [s.id for s in self.seeds] + t_ids,
                                         list(dict.fromkeys(self.grad_ids + ids["hvp"])))
        self.tangent_ids = ids
        return ids

    def sparsity(self, kind: str, arrays: list) -> tuple:
        """The structural nonzeros (rows, columns, (m, n)) of the stacked Jacobian of the
        outputs ("jacobian") or of the gradients ("hessian") with respect to wrt, at the
        index and mask inputs among ``arrays`` (the bound inputs, in order), and how to
        sweep it: ("forward", a colour per column) or ("reverse", a colour per row)."""
        from .sparsity import Pattern, sweeps
        if kind not in self._patterns:
            rows = self.out_ids if kind == "jacobian" else self.grad_ids
            self._patterns[kind] = Pattern(self.work, rows, [w.id for w in self.wrt])
        given = {e.id: a for e, a in zip(self.inputs, arrays) if e.dtype.kind != "f"}
        rows, cols, shape = self._patterns[kind].pairs(given)
        # a Hessian is swept by H·u only (forward over reverse)
        return rows, cols, shape, sweeps(rows, cols, shape,
                                       reverse=kind == "jacobian" and bool(self.seeds))

    def signature(self) -> Signature:
        def slots(exprs):
            return [(e.name, e.shape, e.dtype) for e in exprs]
        # an integer index input is checked against the smallest axis it indexes
        bounds = {e.name: e._attrs["bound"] for e in self.inputs if "bound" in e._attrs}
        return Signature(slots(self.inputs), slots(self.outputs), slots(self.wrt),
                         slots(self.seeds), self.out_ids, self.grad_ids, bounds)

    def entry_specs(self) -> dict:
        nodes = self.work.attrs
        return {k: EntrySpec(k, tuple(e.outputs),
                             tuple((nodes[i]["shape"], nodes[i]["dtype"]) for i in e.outputs),
                             tuple(nodes[i]["params"][0].value for i in e.constants))
                for k, e in self.entries.items()}


class Artifact:
    """A compiled module: its entries, and — generated on demand when the code came from
    a cache — the simplified kernels and the LLVM IR before and after optimisation."""

    def __init__(self, graph: Graph, entries: list, prefix: str, blas: bool = False,
                 fast_math: bool = False):
        self.graph, self.entries, self.prefix, self.blas = graph, entries, prefix, blas
        self.fast_math = fast_math
        self._ir = None
        self._kernels = {}
        self._optimized = ""
        self.engine = None
        self.upgrade = None     # a Future of the optimised code (see jit.JIT._upgrade)
        self.start_upgrade = None       # what starts it (Loaded.start_upgrade)
        self.work = None        # element operations a call makes, about (see ``_work``);
                                # None where the code came from the cache
        self.key, self.names = None, ()     # set by build: what a pickled copy ships

    @property
    def address(self) -> int:
        """The address of the (first) entry point."""
        return self.entries[0].address

    def generate(self, blas: bool, hand_over=None) -> str:
        """The module's LLVM IR; ``blas=False`` keeps every matmul as loops (for export).
        With ``hand_over``, a large program's steps are handed to it in parts as they are
        lowered (see ``Lowerer.program``), and the text returned holds the entries."""
        module = new_module(self.prefix)
        lowerer = Lowerer(module, blas=blas, fast_math=self.fast_math)
        lowerer.vector_bits = jit.vector_bits()
        handed, progs = False, []
        for entry in self.entries:
            stream = None
            if hand_over is not None and not entry.batched and not self.fast_math:
                # a large straight-line program: its functions are lowered (and go to
                # LLVM) as they are scheduled (see Lowerer.stream)
                top = collections.defaultdict(lambda: self.graph)   # (every kernel's graph)
                lowerer.hand_over = hand_over
                lowerer.scalar = functools.partial(_scalar, top, False)
                lowerer.operations = _operations(top)

                def stream(kernel, prog, name=entry.name):
                    lowerer.stream(name, kernel, prog)
            prog = schedule(self.graph, entry.inputs, entry.outputs, stream, LARGE_PROGRAM)
            progs.append(prog)
            kernels = list(_kernels(self.graph, prog))
            # Faithful by default: the kernels are the graph's own operations, unevaluated,
            # so the code computes what IEEE arithmetic gives for them.  SymPy's algebra
            # (x + c − c → x, log(exp(z)) → z) only under fast_math, and within budget:
            # its evaluation is the costly part of a compile.
            evaluate = self.fast_math and \
                sum(len(k.members) for _, k in kernels) <= SYMPY_BUDGET
            graphs = {id(k): graph for graph, k in kernels}
            lowerer.scalar = scalar = functools.partial(_scalar, graphs, evaluate)
            lowerer.operations = None if evaluate else _operations(graphs)
            large = sum(len(k.members) for _, k in kernels) >= LARGE_PROGRAM
            lowerer.hand_over = hand_over if (large or prog.streamed) and not entry.batched \
                else None
            (lowerer.batched if entry.batched else lowerer.program)(entry.name, prog)
            self._kernels[entry.kind] = (scalar, kernels)      # SymPy when asked for
            handed = handed or lowerer.hand_over is not None
        text = str(module)
        module.release()
        self.work = sum(_work(prog) for prog in progs)
        if not handed and blas == self.blas:     # the whole module: what ``llvm_ir`` shows
            self._ir = text
        return text

    @property
    def llvm_ir(self) -> str:
        if self._ir is None:
            self._ir = self.generate(self.blas)
        return self._ir

    def kernels(self, kind: str) -> list:
        if kind not in self._kernels:
            self._ir = self.generate(self.blas)
        scalar, kernels = self._kernels[kind]
        return [scalar(k) for _, k in kernels]

    @property
    def optimized_ir(self) -> str:
        if not self._optimized:
            self._optimized = jit.optimized(self.llvm_ir)
        return self._optimized


def _work(prog) -> int:
    """About how many element operations a call of ``prog`` makes (loops by their trip
    counts): what decides whether a quick first tier pays (``TIER_WORK``)."""
    total = 0
    for step in prog.steps:
        if isinstance(step, Kernel):
            total += math.prod(step.domain) * (len(step.members) + len(step.reductions))
        elif isinstance(step, Loop):
            total += step.length * _work(step.body)
        elif isinstance(step, MatMul):
            (m, k), (_, n) = step.a.shape, step.b.shape
            total += m * k * n
        else:
            total += math.prod(step.out.shape)
    return total


def _scalar(graphs, evaluate, k):
    """Kernel ``k``'s SymPy form (made when it is lowered, or dumped)."""
    if k.scalar is None:
        k.scalar = to_sympy(graphs[id(k)], k, evaluate)
    return k.scalar


def _operations(graphs):
    """kernel -> its members as (id, operator, operands): what lowering writes each
    kernel's members from (``Lowerer._member_lines``)."""
    def operations(k):
        nodes = graphs[id(k)].attrs
        return [(m, nodes[m]["op"], nodes[m]["args"]) for m in k.members]
    return operations


def _kernels(graph: Graph, prog):
    """(graph, kernel) for every kernel of ``prog``, loop bodies' included."""
    for step in prog.steps:
        if isinstance(step, Kernel):
            yield graph, step
        elif isinstance(step, Loop):
            yield from _kernels(step.graph, step.body)


def structural_key(work: Graph, entries: list, fast_math: bool = False) -> str:
    """A hash of everything the generated code depends on: the nodes the entries read,
    in creation order, with operators, parameters, shapes and dtypes."""
    need = set()
    for e in entries:
        if work._ancestry is not None:      # remembered: the schedule's depth-first walk
            depth_first(work, e.outputs)    # gives the ancestors too (one walk, not two)
        need |= ancestors(work, e.outputs)
        need.update(e.inputs)
    h = hashlib.sha256()
    nodes = work.attrs
    order = sorted(need)
    for start in range(0, len(order), 4096):    # 4,096 nodes at a time: the loop in C
        rows = [(i, a["op"], a["args"], a["params"], a["shape"], a["dtype"].char)
                for i in order[start:start + 4096] for a in (nodes[i],)]
        try:    # marshal's format 0 has no references or interning marks: the same
            h.update(marshal.dumps(rows, 0))    # rows, the same bytes in any process
        except ValueError:      # parameters that are objects (array constants, bodies)
            h.update(repr(rows).encode())
    h.update(repr(sorted((e.kind, e.outputs, e.inputs) for e in entries)).encode())
    h.update(b"fast_math" if fast_math else b"ieee")
    return h.hexdigest()


def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def prepare(g: Graph, outputs, wrt, inputs=None, fast_math=False,
            mode="reverse") -> CompilePlan:
    """Copy the graph and add what compiling needs: seeds, adjoints, output copies —
    with ``mode="jvp"``, tangents instead of seeds and adjoints."""
    outputs, wrt = _as_list(outputs), _as_list(wrt)
    if not outputs:
        raise GraphError("compile needs at least one output")
    for e in outputs + wrt:
        if not isinstance(e, Expr):
            raise TypeError(f"outputs and wrt must be graph expressions, got {e!r}")
        if e.graph is not g:
            raise GraphError(f"{e.name} belongs to another graph")
    used = ancestors(g, [o.id for o in outputs]) | {w.id for w in wrt}
    if inputs is None:   # the function's parameters: the inputs used, in graph order
        inputs = [i for i in g.inputs if i.id in used]
    else:
        inputs = _as_list(inputs)
        for i in inputs:
            if not isinstance(i, Expr) or i.graph is not g or i.op != "input":
                raise GraphError(f"inputs= takes input nodes of this graph, got {i!r}")
        missing = [i.name for i in g.inputs if i.id in used and i not in inputs]
        if missing:
            raise GraphError(f"the outputs use input(s) {', '.join(missing)} that are not in "
                             "inputs=; list every input the outputs read")
    for w in wrt:
        if w.op in ("const", "array"):
            raise GraphError(f"cannot differentiate with respect to the constant {w.name}")
        if w.dtype.kind != "f":
            raise GraphError(f"cannot differentiate with respect to {w.name}, an input of "
                             f"dtype {w.dtype} (an index or a mask); list float inputs in wrt")
    work = g.copy()
    outs = [Expr(work, o.id) for o in outputs]
    seeds, grads = [], []
    if wrt and mode == "reverse":
        progress.stage("reverse pass")
        for k, o in enumerate(outs):
            seeds.append(work.input(work.fresh_name(f"seed_{o.name}"), o.shape, o.dtype))
        grads = work.grad(outs, [Expr(work, w.id) for w in wrt], seeds)
    inputs = [Expr(work, i.id) for i in inputs]
    wrt = [Expr(work, w.id) for w in wrt]
    out_ids = _materialised(work, outs)
    grad_ids = _materialised(work, grads)
    plan = CompilePlan(g, work, inputs, outs, wrt, seeds, out_ids, grad_ids,
                       fast_math=fast_math)
    ins = [i.id for i in inputs]
    plan.entries["forward"] = _entry(work, "forward", ins, list(dict.fromkeys(out_ids)))
    if wrt and mode == "reverse":
        plan.entries["vjp"] = _entry(work, "vjp", ins + [s.id for s in seeds],
                                     list(dict.fromkeys(out_ids + grad_ids)))
    elif wrt:
        plan.add_tangents()
    return plan


def _entry(work: Graph, kind, args, outputs) -> Entry:
    """An entry reading ``args`` and the array constants its outputs need (passed after
    the arguments at every call: the code does not depend on their values)."""
    constants = []
    if work._array_ids:
        need = ancestors(work, outputs)
        constants = [i for i in work._array_ids if i in need]     # (ids are in order)
    return Entry(kind, args + constants, outputs, constants=constants)


def _materialised(work: Graph, exprs):
    """Output node ids, with views/inputs/constants copied into their own buffer."""
    ids = []
    for e in exprs:
        if kind_of(e.op) in ("view", "leaf"):
            e = work.apply("copy", e)
        ids.append(e.id)
    return ids


def compile_graph(g: Graph, outputs, wrt=(), inputs=None, fast_math=False, mode="reverse"):
    """Compile ``outputs`` (and their VJP for ``wrt``); returns a CompiledFunction.

    The function takes ``inputs`` (default: the inputs the outputs use, in graph order).
    ``fast_math=True`` lets SymPy apply real-number identities and LLVM fuse a·b + c into
    FMA: fewer operations, results that may differ from IEEE evaluation of the graph.
    ``mode="jvp"`` compiles forward mode (``f.jvp``) instead of the reverse pass: no
    adjoints are built, and ``f.jacobian`` sweeps columns."""
    from .function import CompiledFunction, Structured
    if not isinstance(fast_math, bool):
        raise TypeError(f"fast_math must be True or False, got {fast_math!r}")
    if mode not in ("reverse", "jvp"):
        raise ValueError(f"mode must be 'reverse' (vjp, and jvp on first use) or 'jvp' "
                         f"(forward mode only), got {mode!r}")
    out_keys, wrt_keys = _keys(outputs, "outputs"), _keys(wrt, "wrt")
    flat = [list(x.values()) if isinstance(x, dict) else x for x in (outputs, wrt)]
    with jit.collector_paused(), progress.compiling(len(g)):
        plan = prepare(g, *flat, inputs, fast_math, mode)
        if out_keys is None and wrt_keys is None:
            f = CompiledFunction(plan)
        else:          # results keyed as the dicts given
            f = Structured(plan)
            f.out_keys, f.wrt_keys = out_keys, wrt_keys
    f.recipe = (g, _ids(outputs), _ids(wrt), None if inputs is None else _ids(inputs),
                fast_math, mode, uuid.uuid4().hex)
    return f


def _keys(exprs, what: str):
    """A dict's keys, in order (None for anything else)."""
    if not isinstance(exprs, dict):
        return None
    if not exprs:
        raise GraphError(f"{what} is an empty dict: give at least one expression")
    return tuple(exprs)


def _ids(exprs):
    """Node ids of an Expr or a list of them, or a dict of them by key (how a pickled
    function names its nodes)."""
    if isinstance(exprs, dict):
        return {k: e.id for k, e in exprs.items()}
    return [e.id for e in (exprs if isinstance(exprs, (list, tuple)) else [exprs])]


def _nodes(g: Graph, ids):
    """``_ids`` made nodes again."""
    if isinstance(ids, dict):
        return {k: g.node(i) for k, i in ids.items()}
    return [g.node(i) for i in ids]


_rebuilt: collections.OrderedDict = collections.OrderedDict()   # token -> function
_rebuilt_lock = threading.Lock()


def rebuild(g: Graph, outputs, wrt, inputs, fast_math, mode, token, shipped=()):
    """A pickled compiled function in another process, made again from its graph once per
    process — a Dask worker unpickling it for every task reuses the first (by ``token``,
    which names the original function).  Its object code comes with it (``shipped``: the
    sender's checksummed cache entries), used only where this process's symgrad build,
    LLVM and CPU are the sender's (else compiled here, or taken from the disk cache)."""
    with _rebuilt_lock:
        f = _rebuilt.get(token)
        if f is not None:
            _rebuilt.move_to_end(token)
            return f
    for key, data in shipped:
        cache.offer(key, data)
    f = compile_graph(g, _nodes(g, outputs), _nodes(g, wrt),
                      None if inputs is None else _nodes(g, inputs),
                      fast_math=fast_math, mode=mode)
    f.recipe = f.recipe[:-1] + (token,)
    with _rebuilt_lock:
        _rebuilt[token] = f
        while len(_rebuilt) > 64:
            _rebuilt.popitem(last=False)
    return f


def export_ir(work: Graph, entries: list, name: str, fast_math=False) -> tuple[str, dict]:
    """IR of all ``entries`` in one module with matmuls as loops (no JIT-bound symbols),
    for ahead-of-time export; returns the text and each kind's entry name."""
    key = structural_key(work, entries, fast_math)
    if any(e.constants for e in entries):
        raise GraphError("export of a function with array constants is not supported: pass "
                         "the arrays as inputs (Graph.input) to export it")
    named = [Entry(e.kind, e.inputs, e.outputs, f"{name}_{key[:16]}_{e.kind}") for e in entries]
    artifact = Artifact(work, named, name, fast_math=fast_math)
    return artifact.generate(blas=False), {e.kind: e.name for e in named}


def build(work: Graph, entries: list, name=None, fast_math=False) -> Artifact:
    """Schedule, simplify and lower each entry into one module and JIT it — or take the
    same code from the compile cache, keyed by the graph's structure."""
    # (called by NativeFunction._load, which pauses the collector for the build and glue)
    with work.remembering_ancestors():     # the key's and the schedule's: one walk
        return _build(work, entries, name, fast_math)


def _build(work: Graph, entries: list, name, fast_math) -> Artifact:
    blas = jit.blas() is not None
    key = structural_key(work, entries, fast_math)
    prefix = f"{name or 'sg'}_{key[:24]}"
    named = [Entry(e.kind, e.inputs, e.outputs, f"{prefix}_{e.kind.replace(':', '_')}",
                   constants=e.constants, batched=e.batched) for e in entries]
    artifact = Artifact(work, named, prefix, blas, fast_math)
    names = [e.name for e in named]
    loaded = jit.lookup(key, names)
    if loaded is None:
        with progress.compiling(len(work)):
            progress.stage("schedule, simplify, lower")

            def produce(hand_over):     # a large program's parts compile meanwhile
                text = artifact.generate(blas, hand_over)
                progress.stage("LLVM")
                return text
            # fast_math code carries "contract": the optimising code generator would fuse
            # into FMAs that the quick one does not, so its two tiers would differ; and
            # where loops do much work a call, quick code costs more than it saves
            loaded = jit.load_parts(produce, names, key=key, tiered=not fast_math,
                                    pays=lambda: artifact.work <= TIER_WORK)
        stats.compiles += 1
        log.info("compiled %s: %d nodes, entries %s", prefix, len(work),
                 [e.kind for e in entries])
    else:
        stats.cache_hits += 1
        log.info("reused %s from the compile cache", prefix)
    for e in named:
        e.address = loaded.addresses[e.name]
    artifact.key, artifact.names = key, names
    artifact.engine = loaded.engine      # the code lives as long as the artifact holds it
    artifact.start_upgrade = loaded.start_upgrade    # tier 2 of straight-line code
    artifact.upgrade = loaded.upgrade        # or, taken from memory, its tier 2 under way
    return artifact
