"""graph → reverse graph → kernels → sympy → LLVM IR → JIT: the whole path in one place."""
from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import os
from dataclasses import dataclass


from .graph import Expr, Graph, GraphError, ancestors
from .lower import Lowerer, new_module
from .ops import ELEMENTWISE
from .schedule import schedule
from .simplify import SYMPY_BUDGET, to_sympy

log = logging.getLogger("symgrad.compile")
if os.environ.get("SYMGRAD_LOG_COMPILES"):
    logging.basicConfig()
    log.setLevel(logging.INFO)

stats = {"compiles": 0, "cache_hits": 0}


@dataclass
class Entry:
    """One native entry point: which nodes it reads and writes, in table order."""
    name: str
    inputs: list             # node ids
    outputs: list            # node ids (unique)
    address: int = 0


class Artifact:
    """A compiled module: its entries, and — generated on demand when the code came from
    a cache — the simplified kernels and the LLVM IR before and after optimisation."""

    def __init__(self, graph: Graph, entries: dict, prefix: str, blas: bool = False):
        self.graph, self.entries, self.prefix, self.blas = graph, entries, prefix, blas
        self._ir = None
        self._kernels = {}
        self._optimized = ""

    def _generate(self):
        self._ir = self.generate(self.blas)

    def generate(self, blas: bool) -> str:
        """The module's LLVM IR; ``blas=False`` keeps every matmul as loops (for export)."""
        module = new_module(self.prefix)
        lowerer = Lowerer(module, blas=blas)
        for kind, entry in self.entries.items():
            prog = schedule(self.graph, entry.inputs, entry.outputs)
            kernels = [st for st in prog.steps if hasattr(st, "members")]
            # sympy's evaluation is the costly part: within budget for the whole program
            evaluate = sum(len(k.members) for k in kernels) <= SYMPY_BUDGET
            scalar = {id(st): to_sympy(self.graph, st, evaluate) for st in kernels}
            self._kernels[kind] = list(scalar.values())
            lowerer.program(entry.name, self.graph, prog, scalar)
        return str(module)

    @property
    def llvm_ir(self) -> str:
        if self._ir is None:
            self._generate()
        return self._ir

    def kernels(self, kind: str) -> list:
        if kind not in self._kernels:
            self._generate()
        return self._kernels[kind]

    @property
    def optimized_ir(self) -> str:
        if not self._optimized:
            from symgrad.runtime import jit
            self._optimized = jit.optimized(self.llvm_ir)
        return self._optimized


def structural_key(work: Graph, entries: dict) -> str:
    """A hash of everything the generated code depends on: the nodes the entries read,
    in creation order, with operators, parameters, shapes and dtypes."""
    need = set()
    for outs, ins in entries.values():
        need |= ancestors(work, outs) | set(ins)
    h = hashlib.sha256()
    nodes = work.nx.nodes
    for i in sorted(need):
        a = nodes[i]
        h.update(repr((i, a["op"], a["args"], a["params"], a["shape"], a["dtype"].char))
                 .encode())
    h.update(repr(sorted(entries.items())).encode())
    return h.hexdigest()


def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def prepare(g: Graph, outputs, wrt, inputs=None):
    """Copy the graph and add what compiling needs: seeds, adjoints, output copies."""
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
        if w.op == "const":
            raise GraphError(f"cannot differentiate with respect to the constant {w.name}")
    work = g.copy()
    outs = [Expr(work, o.id) for o in outputs]
    seeds, grads = [], []
    if wrt:
        for k, o in enumerate(outs):
            seeds.append(work.input(_fresh(work, f"seed_{o.name}"), o.shape, o.dtype))
        grads = work.grad(outs, [Expr(work, w.id) for w in wrt], seeds)
    return work, inputs, outs, seeds, grads


def _fresh(g, name):
    taken = set(g._inputs)
    n, candidate = 0, name
    while candidate in taken:
        n += 1
        candidate = f"{name}_{n}"
    return candidate


def _materialised(work: Graph, exprs):
    """Output node ids, with views/inputs/constants copied into their own buffer."""
    ids = []
    for e in exprs:
        if e.op not in ELEMENTWISE and e.op not in ("sum", "matmul"):
            e = work.apply("copy", e)
        ids.append(e.id)
    return ids


@contextlib.contextmanager
def _collector_paused():
    """Building graphs allocates many small objects that live on, so Python's cyclic
    collector runs again and again over everything alive; it gets nothing back, and
    took most of a compile served from the cache.  Paused for the compile, as it was
    after."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def compile_graph(g: Graph, outputs, wrt=(), inputs=None, name=None):
    """Compile ``outputs`` (and their VJP for ``wrt``); returns a CompiledFunction.

    The function takes ``inputs`` (default: the inputs the outputs use, in graph order)."""
    with _collector_paused():
        return _compile_graph(g, outputs, wrt, inputs, name)


def _compile_graph(g, outputs, wrt, inputs, name):
    from symgrad.runtime.function import CompiledFunction
    work, inputs, outs, seeds, grads = prepare(g, outputs, wrt, inputs)
    fwd_ids = _materialised(work, outs)
    entries = {"forward": (list(dict.fromkeys(fwd_ids)), [i.id for i in inputs])}
    grad_ids = []
    if wrt:
        grad_ids = _materialised(work, grads)
        entries["vjp"] = (list(dict.fromkeys(fwd_ids + grad_ids)),
                          [i.id for i in inputs] + [s.id for s in seeds])
    return CompiledFunction(g, work, entries, inputs, outs, fwd_ids, list(wrt), seeds,
                            grad_ids)


def export_ir(work: Graph, entries: dict, name: str) -> tuple[str, dict]:
    """IR of all ``entries`` in one module with matmuls as loops (no JIT-bound symbols),
    for ahead-of-time export; returns the text and each kind's entry name."""
    key = structural_key(work, entries)
    artifact = Artifact(work, {kind: Entry(f"{name}_{key[:16]}_{kind}", ins, outs)
                               for kind, (outs, ins) in entries.items()}, name)
    return artifact.generate(blas=False), {k: e.name for k, e in artifact.entries.items()}


def build(work: Graph, entries: dict, name=None) -> Artifact:
    """Schedule, simplify and lower each entry into one module and JIT it — or take the
    same code from the compile cache, keyed by the graph's structure."""
    from symgrad.runtime import jit
    blas = jit.blas() is not None
    key = structural_key(work, entries)
    prefix = f"{name or 'sg'}_{key[:24]}"
    artifact = Artifact(work, {kind: Entry(f"{prefix}_{kind}", ins, outs)
                               for kind, (outs, ins) in entries.items()}, prefix, blas)
    names = [e.name for e in artifact.entries.values()]
    loaded = jit.lookup(key, names)
    if loaded is None:
        loaded = jit.load(artifact.llvm_ir, names, key=key)
        stats["compiles"] += 1
        log.info("compiled %s: %d nodes, entries %s", prefix, len(work), list(entries))
    else:
        stats["cache_hits"] += 1
        log.info("reused %s from the compile cache", prefix)
    for e in artifact.entries.values():
        e.address = loaded.addresses[e.name]
    artifact.engine = loaded.engine      # the code lives as long as the artifact holds it
    return artifact
