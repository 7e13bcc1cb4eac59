"""graph → reverse graph → kernels → sympy → LLVM IR → JIT: the whole path in one place."""
from __future__ import annotations

import hashlib
import itertools
import logging
import os
import threading
from dataclasses import dataclass, field

import numpy as np

from .graph import Expr, Graph, GraphError
from .lower import Lowerer, new_module
from .ops import ELEMENTWISE
from .schedule import schedule
from .simplify import to_sympy

log = logging.getLogger("symgrad.compile")
if os.environ.get("SYMGRAD_LOG_COMPILES"):
    logging.basicConfig()
    log.setLevel(logging.INFO)

_names = itertools.count()
_names_lock = threading.Lock()
stats = {"compiles": 0}


@dataclass
class Entry:
    """One native entry point: which nodes it reads and writes, in table order."""
    name: str
    inputs: list             # node ids
    outputs: list            # node ids (unique)
    kernels: list = field(default_factory=list)   # ScalarKernel per fused kernel
    address: int = 0


@dataclass
class Artifact:
    """A compiled module: its entries and the IR before and after optimisation."""
    graph: Graph
    entries: dict            # "forward" / "vjp" -> Entry
    llvm_ir: str
    optimized_ir: str = ""


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
    from .schedule import _ancestors
    used = _ancestors(g, [o.id for o in outputs]) | {w.id for w in wrt}
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


def compile_graph(g: Graph, outputs, wrt=(), inputs=None, name=None):
    """Compile ``outputs`` (and their VJP for ``wrt``); returns a CompiledFunction.

    The function takes ``inputs`` (default: the inputs the outputs use, in graph order)."""
    from symgrad.runtime.function import CompiledFunction
    work, inputs, outs, seeds, grads = prepare(g, outputs, wrt, inputs)
    fwd_ids = _materialised(work, outs)
    entries = {"forward": (list(dict.fromkeys(fwd_ids)), [i.id for i in inputs])}
    grad_ids = []
    if wrt:
        grad_ids = _materialised(work, grads)
        entries["vjp"] = (list(dict.fromkeys(fwd_ids + grad_ids)),
                          [i.id for i in inputs] + [s.id for s in seeds])
    artifact = build(work, entries, name)
    return CompiledFunction(g, work, artifact, inputs, outs, fwd_ids, list(wrt), seeds,
                            grad_ids)


def build(work: Graph, entries: dict, name=None) -> Artifact:
    """Schedule, simplify and lower each entry into one module, then JIT it."""
    from symgrad.runtime import jit
    with _names_lock:
        uid = next(_names)
    digest = hashlib.sha1(repr(sorted(entries.items())).encode()).hexdigest()[:8]
    prefix = f"{name or 'symgrad'}_{digest}_{uid}"
    module = new_module(prefix)
    lowerer = Lowerer(module)
    built = {}
    for kind, (out_ids, in_ids) in entries.items():
        prog = schedule(work, in_ids, out_ids)
        scalar = {}
        kernels = []
        for step in prog.steps:
            if hasattr(step, "members"):
                scalar[id(step)] = sk = to_sympy(work, step)
                kernels.append(sk)
        entry = Entry(f"{prefix}_{kind}", in_ids, out_ids, kernels)
        lowerer.program(entry.name, work, prog, scalar)
        built[kind] = entry
    text = str(module)
    loaded = jit.load(text, [e.name for e in built.values()])
    for e in built.values():
        e.address = loaded.addresses[e.name]
    stats["compiles"] += 1
    log.info("compiled %s: %d nodes, entries %s", prefix, len(work), list(built))
    return Artifact(work, built, text, loaded.optimized_ir)
