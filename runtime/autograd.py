"""backward and grad: the recorded subgraph, compiled once per structure, run with a seed.

``backward`` walks the ``grad_fn`` graph from the output, turns it into a
``symgrad.compiler.Graph`` (every tensor without a ``grad_fn`` becomes an input,
so new data does not mean a new compile), compiles its VJP and calls it with the
seed.  Compiled functions are cached by a key made of the recorded operations,
their constants, shapes and dtypes: a training loop compiles once.

``create_graph=True`` records the backward itself: each gradient's ``grad_fn``
splices the compiled reverse graph into whatever graph differentiates it next.
"""
from __future__ import annotations

import functools
import itertools
import threading

import numpy as np

from symgrad.compiler import Graph
from symgrad.compiler.backend.stats import logger, stats
from .tensor import Node, Tensor, as_tensor, is_grad_enabled

log = logger("symgrad.runtime")
_cache: dict = {}
_last_shapes: dict = {}
_lock = threading.Lock()
CACHE_SIZE = 512


def compile_count() -> int:
    """How many backward graphs this process has compiled (cache misses)."""
    return stats.backward_compiles


def _sequence_of(t):
    return t.grad_fn.seq


class _Tape:
    """The recorded subgraph feeding ``roots``: nodes in topological order, and inputs."""

    def __init__(self, roots):
        # every tensor reachable from the roots; leaves in the order they are met (the
        # same for the same structure, so the cache key is stable), nodes in creation order
        index, inputs, nodes = {}, [], []
        stack = list(roots)
        while stack:
            t = stack.pop()
            if id(t) in index:
                continue
            node = t.grad_fn
            if node is None:
                index[id(t)] = ("i", len(inputs))
                inputs.append(t)
                continue
            if node.freed:
                raise RuntimeError(
                    "Trying to backward through the graph a second time: its buffers were "
                    "freed by the first backward. Specify retain_graph=True in the first "
                    "backward() (or autograd.grad()) to backward through it again.")
            index[id(t)] = None
            nodes.append(t)
            stack.extend(node.inputs)
        nodes.sort(key=_sequence_of)
        for k, t in enumerate(nodes):
            index[id(t)] = ("n", k)
        self.order, self.inputs, self.index = nodes, inputs, index

    @functools.cached_property
    def int_as(self):
        """The dtype integer and bool inputs take part as, as PyTorch promotes them: the
        widest float dtype in the graph (float32 if none).  Asked only when there is one."""
        floats = [t._data.dtype for t in self.inputs + self.order if t._data.dtype.kind == "f"]
        return np.result_type(np.float32, *floats)

    def arrays(self, used):
        """The data of the inputs ``used``, as the compiled function takes it."""
        return [t._data if t._data.dtype.kind == "f" else t._data.astype(self.int_as)
                for t in (self.inputs[k] for k in used)]

    def key(self, roots, targets):
        structure = tuple((t.grad_fn.key, tuple(self.index[id(p)] for p in t.grad_fn.inputs))
                          for t in self.order)
        shapes = tuple((t._data.shape, t._data.dtype.char) for t in self.inputs)
        return (structure, tuple(self.index[id(r)] for r in roots),
                tuple(self.index[id(t)] for t in targets)), shapes

    def build(self, roots, targets):
        g = Graph()
        exprs = {}
        for k, t in enumerate(self.inputs):
            dtype = t._data.dtype if t._data.dtype.kind == "f" else self.int_as
            exprs[("i", k)] = g.input(f"t{k}", t._data.shape, dtype)
        for k, t in enumerate(self.order):
            args = [exprs[self.index[id(p)]] for p in t.grad_fn.inputs]
            exprs[("n", k)] = t.grad_fn.build(g, *args)
        return g, [exprs[self.index[id(r)]] for r in roots], \
            [exprs[self.index[id(t)]] for t in targets]


_ONE = {}   # dtype -> a read-only 0-d one: the implicit seed of a scalar output


def _seeds(roots, grad_outputs):
    seeds = []
    for k, (r, s) in enumerate(zip(roots, grad_outputs)):
        if s is None and r._data.ndim == 0:
            one = _ONE.get(r._data.dtype)
            if one is None:
                one = _ONE[r._data.dtype] = Tensor._make(np.ones((), r._data.dtype))
            seeds.append(one)
            continue
        if s is None:
            if r._data.size != 1:
                raise RuntimeError(
                    f"grad can be implicitly created only for scalar outputs; output {k} has "
                    f"shape {tuple(r.shape)}: pass gradient= a tensor of that shape (the v "
                    "of vᵀJ)")
            s = Tensor._make(np.ones(r._data.shape, r._data.dtype))
        s = as_tensor(s)
        if s._data.shape != r._data.shape:
            raise RuntimeError(
                f"Mismatch in shape: grad_output[{k}] has a shape of {tuple(s.shape)} and "
                f"output[{k}] has a shape of {tuple(r.shape)}. The gradient v of vᵀJ must "
                "have the output's shape.")
        seeds.append(s)
    return seeds


def _compiled(tape, roots, targets):
    (structure, shapes) = tape.key(roots, targets)
    key = (structure, shapes)
    with _lock:
        entry = _cache.get(key)
    if entry is not None:
        stats.backward_cache_hits += 1
        return entry
    reason = ("first backward of this graph" if structure not in _last_shapes else
              f"input shapes/dtypes changed from {_last_shapes[structure]} to {shapes}")
    g, outs, wrt = tape.build(roots, targets)
    f = g.compile(outs, wrt)
    names = {n for n, _, _ in f.inputs}
    used = [k for k in range(len(tape.inputs)) if f"t{k}" in names]
    entry = (f, used)
    with _lock:
        stats.backward_compiles += 1
        _last_shapes[structure] = shapes
        while _cache and len(_cache) >= CACHE_SIZE:   # the oldest go first
            _cache.pop(next(iter(_cache)))
        _cache[key] = entry
    log.info("compiled backward #%d (%d recorded ops): %s", stats.backward_compiles,
             len(tape.order), reason)
    return entry


def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def run_backward(roots, grad_outputs, targets, retain_graph, create_graph, tape=None):
    """vᵀJ of ``roots`` with respect to ``targets`` (arrays, or Tensors if create_graph)."""
    for k, r in enumerate(roots):
        if not isinstance(r, Tensor):
            raise TypeError(f"output {k} is a {type(r).__name__}, not a tensor")
        if not r.requires_grad:
            raise RuntimeError(f"element {k} of tensors does not require grad and does not "
                               "have a grad_fn")
    seeds = _seeds(roots, grad_outputs)
    tape = tape or _Tape(roots)
    for t in targets:
        if id(t) not in tape.index:
            raise RuntimeError("one of the differentiated tensors does not appear in the "
                               "graph of the outputs; pass allow_unused=True to get None")
    f, used = _compiled(tape, roots, targets)
    arrays = tape.arrays(used)
    # a 0-d seed goes as a Python float: the compiled function's fast path takes those
    seed = [s._data.item() if s._data.ndim == 0 else s._data for s in seeds]
    seed = seed[0] if len(seed) == 1 else seed
    _, grads = f.vjp(*arrays, seed=seed)
    grads = [np.asarray(g, dtype=t._data.dtype) for g, t in zip(grads, targets)]
    if not (retain_graph if retain_graph is not None else create_graph):
        for t in tape.order:
            t.grad_fn.freed = True
    if not create_graph:
        return list(grads)
    return _recorded_grads(f, tape, used, seeds, grads)


_tokens = itertools.count()


def _token(work) -> int:
    """A number that names this work graph for the life of the process.  (Its ``id`` would
    not: once the graph is freed, a new one can get the same address, and a later
    backward's cache key would then find the old graph's compiled function.)"""
    token = getattr(work, "_splice_token", None)
    if token is None:
        token = work._splice_token = next(_tokens)
    return token


def _recorded_grads(f, tape, used, seeds, grads):
    """Gradients whose grad_fn is the compiled reverse graph, spliced where needed."""
    work = f.work
    params = [work.node(f"t{k}").id for k in used]
    seed_ids = [work.node(name).id for name, _, _ in f.seeds]
    parents = [tape.inputs[k] for k in used] + list(seeds)
    out = []
    for k, (grad, gid) in enumerate(zip(grads, f._grad_ids)):
        def build(g, *args, gid=gid):
            mapping = dict(zip(params + seed_ids, args))
            return g.splice(work, [work.node(gid)], mapping)[0]
        t = Tensor._make(np.asarray(grad))
        if is_grad_enabled() and any(p.requires_grad for p in parents):
            t.requires_grad = True
            t.grad_fn = Node("CompiledBackward0", ("splice", _token(work), gid), build,
                             parents)
        out.append(t)
    return out


def backward(tensor, gradient=None, retain_graph=None, create_graph=False, inputs=None):
    """``tensor.backward(gradient)``: accumulate vᵀJ into the leaves' ``.grad``."""
    tape = _Tape([tensor])
    tape_targets = _targets(tape, inputs)
    grads = run_backward([tensor], [gradient], tape_targets, retain_graph, create_graph, tape)
    for t, g in zip(tape_targets, grads):
        value = g._data if isinstance(g, Tensor) else g
        if t._grad is None:
            t._grad = g if isinstance(g, Tensor) else Tensor._make(np.array(value))
        elif create_graph:
            t._grad = t._grad + g
        else:
            t._grad._data += value


def _targets(tape, inputs):
    if inputs is not None:
        return [as_tensor(t) for t in _as_list(inputs)]
    leaves = [t for t in tape.inputs if t.requires_grad]
    retained = [t for t in tape.order if t._retain]
    return leaves + retained


def grad(outputs, inputs, grad_outputs=None, retain_graph=None, create_graph=False,
         allow_unused=False):
    """Gradients of ``outputs`` with respect to ``inputs``, returned, not accumulated."""
    outputs, inputs = _as_list(outputs), _as_list(inputs)
    grad_outputs = _as_list(grad_outputs) if grad_outputs is not None else [None] * len(outputs)
    if len(grad_outputs) != len(outputs):
        raise RuntimeError(f"grad_outputs has {len(grad_outputs)} entries for "
                           f"{len(outputs)} outputs")
    tape = _Tape(outputs)
    present = [t for t in inputs if id(t) in tape.index]
    if len(present) != len(inputs) and not allow_unused:
        raise RuntimeError("One of the differentiated Tensors appears to not have been used "
                           "in the graph. Set allow_unused=True if this is the desired behavior.")
    grads = run_backward(outputs, grad_outputs, present, retain_graph, create_graph, tape) \
        if present else []
    by_id = {id(t): g for t, g in zip(present, grads)}
    return tuple(None if id(t) not in by_id else
                 (by_id[id(t)] if isinstance(by_id[id(t)], Tensor)
                  else Tensor._make(by_id[id(t)])) for t in inputs)
