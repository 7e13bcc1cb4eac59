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
from .creation import Variable  # noqa: F401  (torch.autograd.Variable)
from .tensor import Node, Tensor, _mode, _value, as_tensor, is_grad_enabled

log = logger("symgrad.runtime")
_cache: dict = {}
_last_shapes: dict = {}
_building: dict = {}      # key -> the lock held while that structure compiles
_lock = threading.Lock()
CACHE_SIZE = 512


def compile_count() -> int:
    """How many backward graphs this process has compiled (cache misses)."""
    return stats.backward_compiles


class _Tape:
    """The recorded subgraph feeding ``roots``: nodes in creation order (a topological
    order), and the leaves it reads, one input per (leaf, version)."""

    def __init__(self, roots):
        index, leaves, nodes = {}, [], []
        stack = [(r.grad_fn or r, None, 0) for r in roots]
        while stack:
            edge, reader, k = stack.pop()
            if type(edge) is Node and edge.custom is not None:
                # an autograd.Function's output: the compiled pass stops here (an input);
                # its Python backward continues from there (see _backward_through_functions)
                if ("c", id(edge)) not in index:
                    index[("c", id(edge))] = ("i", len(leaves))
                    leaves.append((edge, edge.custom[2], False))
                continue
            if type(edge) is Node:
                if id(edge) in index:
                    continue
                if edge.freed:
                    raise RuntimeError(
                        "Trying to backward through the graph a second time: its buffers "
                        "were freed by the first backward. Specify retain_graph=True in the "
                        "first backward() (or autograd.grad()) to backward through it again.")
                edge.check_saved()
                index[id(edge)] = None
                nodes.append(edge)
                stack.extend((e, edge, j) for j, e in enumerate(edge.edges))
                continue
            key = _leaf_key(edge, reader, k)
            if key in index:
                continue
            index[key] = ("i", len(leaves))
            leaves.append((edge, _read(edge, key[1], reader, k), key[2]))
        nodes.sort(key=_sequence_of)
        for k, node in enumerate(nodes):
            index[id(node)] = ("n", k)
        self.order, self.leaves, self.index = nodes, leaves, index

    @property
    def inputs(self):
        return [t for t, _, _ in self.leaves]

    def slot(self, edge, reader=None, k=0):
        """Where an edge (a node, or a leaf as ``reader``'s operand ``k``) sits."""
        if type(edge) is Node:
            return self.index[("c", id(edge)) if edge.custom is not None else id(edge)]
        return self.index[_leaf_key(edge, reader, k)]

    @property
    def functions(self):
        """The autograd.Function outputs where this tape stops."""
        return [e for e, _, _ in self.leaves if type(e) is Node]

    def slots_of(self, t):
        """Every slot holding tensor ``t``: its node, or each version of it read here."""
        if type(t) is Node:
            s = self.index.get(("c", id(t)))
            return [s] if s else []
        if t.grad_fn is not None and t.grad_fn.custom is not None:
            return self.slots_of(t.grad_fn)
        if t.grad_fn is not None:
            s = self.index.get(id(t.grad_fn))
            return [s] if s else []
        return [("i", k) for k, (leaf, _, is_index) in enumerate(self.leaves)
                if leaf is t and not is_index]

    @functools.cached_property
    def int_as(self):
        """The dtype integer and bool inputs take part as, as PyTorch promotes them: the
        widest float dtype in the graph (float32 if none).  Asked only when there is one."""
        floats = [d.dtype for _, d, _ in self.leaves if d.dtype.kind == "f"] + \
            [n.dtype for n in self.order if n.dtype is not None and n.dtype.kind == "f"]
        return np.result_type(np.float32, *floats)

    def arrays(self, used):
        """The data of the inputs ``used``, as the compiled function takes it."""
        return [d if d.dtype.kind == "f" or is_index else d.astype(self.int_as)
                for _, d, is_index in (self.leaves[k] for k in used)]

    def key(self, roots, target_slots):
        structure = tuple((n.key, tuple(self.slot(e, n, j) for j, e in enumerate(n.edges)))
                          for n in self.order)
        shapes = tuple((d.shape, d.dtype.char, i) for _, d, i in self.leaves)
        return (structure, tuple(self.slot(r.grad_fn or r) for r in roots),
                tuple(target_slots)), shapes

    def build(self, roots, target_slots):
        g = Graph()
        exprs = {}
        for k, (_, d, is_index) in enumerate(self.leaves):
            dtype = np.int64 if is_index else d.dtype if d.dtype.kind == "f" else self.int_as
            exprs[("i", k)] = g.input(f"t{k}", d.shape, dtype)
        for k, n in enumerate(self.order):
            args = [exprs[self.slot(e, n, j)] for j, e in enumerate(n.edges)]
            exprs[("n", k)] = n.build(g, *args)
        return g, [exprs[self.slot(r.grad_fn or r)] for r in roots], \
            [exprs[s] for s in target_slots]


def _sequence_of(node):
    return node.seq


def _leaf_key(leaf, reader, k):
    """A leaf as ``reader``'s operand ``k``: the tensor, the version read, and whether it
    is read as an index array (an int64 input) or as numbers."""
    if reader is None:
        return (id(leaf), leaf._version_box.n, False)
    return (id(leaf), reader.versions[k], k in reader.indices)


def _read(leaf, version, reader, k):
    """A leaf's values as ``reader`` read them: now, or the copy kept when it changed."""
    if leaf._version_box.n == version or reader is None:
        return leaf._data
    snapshot = (reader.snapshots or {}).get(k)
    return leaf._data if snapshot is None else snapshot


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


def _compiled(tape, roots, target_slots):
    (structure, shapes) = tape.key(roots, target_slots)
    key = (structure, shapes)
    with _lock:
        entry = _cache.get(key)
        gate = None if entry is not None else _building.setdefault(key, threading.Lock())
    if entry is not None:
        stats.backward_cache_hits += 1
        return entry
    with gate:     # one thread compiles a structure; the others wait and take its result
        with _lock:
            entry = _cache.get(key)
        if entry is not None:
            stats.backward_cache_hits += 1
            return entry
        return _compile(tape, roots, target_slots, key, structure, shapes)


def _compile(tape, roots, target_slots, key, structure, shapes):
    reason = ("first backward of this graph" if structure not in _last_shapes else
              f"input shapes/dtypes changed from {_last_shapes[structure]} to {shapes}")
    g, outs, wrt = tape.build(roots, target_slots)
    f = g.compile(outs, wrt)
    names = {n for n, _, _ in f.inputs}
    used = [k for k in range(len(tape.leaves)) if f"t{k}" in names]
    entry = (f, used)
    with _lock:
        stats.backward_compiles += 1
        _last_shapes[structure] = shapes
        while _cache and len(_cache) >= CACHE_SIZE:   # the oldest go first
            _cache.pop(next(iter(_cache)))
        _cache[key] = entry
        _building.pop(key, None)
    log.info("compiled backward #%d (%d recorded ops): %s", stats.backward_compiles,
             len(tape.order), reason)
    return entry


def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def run_backward(roots, grad_outputs, targets, retain_graph, create_graph, tape=None):
    """vᵀJ of ``roots`` with respect to ``targets`` (arrays, or Tensors if create_graph).
    A leaf read at several versions has several slots; its gradient is their sum."""
    for k, r in enumerate(roots):
        if not isinstance(r, Tensor):
            raise TypeError(f"output {k} is a {type(r).__name__}, not a tensor")
        if not r.requires_grad:
            raise RuntimeError(f"element {k} of tensors does not require grad and does not "
                               "have a grad_fn")
    seeds = _seeds(roots, grad_outputs)
    tape = tape or _Tape(roots)
    groups = [tape.slots_of(t) for t in targets]
    if not all(groups):
        raise RuntimeError("one of the differentiated tensors does not appear in the "
                           "graph of the outputs; pass allow_unused=True to get None")
    slots = [s for group in groups for s in group]
    f, used = _compiled(tape, roots, slots)
    arrays = tape.arrays(used)
    # a 0-d seed goes as a Python float: the compiled function's fast path takes those
    seed = [s._data.item() if s._data.ndim == 0 else s._data for s in seeds]
    seed = seed[0] if len(seed) == 1 else seed
    _, flat = f.vjp(*arrays, seed=seed)
    if not (retain_graph if retain_graph is not None else create_graph):
        for node in tape.order:
            node.freed = True
    if create_graph:
        flat = _recorded_grads(f, tape, used, seeds, flat)
    grads, k = [], 0
    for t, group in zip(targets, groups):
        parts = flat[k:k + len(group)]
        k += len(group)
        if not create_graph:
            dtype = t.dtype if type(t) is Node else t._data.dtype
            parts = [np.asarray(p, dtype=dtype) for p in parts]
        total = parts[0]
        for p in parts[1:]:
            total = total + p
        grads.append(total)
    return grads


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
    parents = [tape.leaves[k][0] for k in used] + list(seeds)
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
    """``tensor.backward(gradient)``: accumulate vᵀJ into the leaves' ``.grad``.

    Hooks on tensors with a grad_fn that replace the gradient are honoured by linearity:
    the difference they make is sent back from that tensor in a second compiled pass."""
    tape = _Tape([tensor])
    trace = _mode.trace
    if trace is not None:
        return _traced_backward(trace, tape, tensor, gradient, retain_graph, create_graph,
                                inputs)
    if tape.functions:
        return _backward_through_functions(tape, tensor, gradient, retain_graph,
                                           create_graph, inputs)
    backward_eager(tape, tensor, gradient, retain_graph, create_graph, inputs)


def backward_eager(tape, tensor, gradient, retain_graph, create_graph, inputs):
    targets = _targets(tape, inputs)
    hooked = [n for n in tape.order if n.hooks and n.retained is not None
              and n.retained() is not None]
    known = {id(t) for t in targets}          # by identity: == on tensors is elementwise
    extra = [n.retained() for n in hooked if id(n.retained()) not in known]
    grads = run_backward([tensor], [gradient], targets + extra,
                         True if hooked else retain_graph, create_graph, tape)
    by_id = {id(t): g for t, g in zip(targets + extra, grads)}
    if hooked:
        _run_hooks(tape, hooked, by_id, targets, create_graph)
        if not (retain_graph if retain_graph is not None else create_graph):
            for node in tape.order:
                node.freed = True
    for t in targets:
        _accumulate(t, by_id[id(t)], create_graph)


def _traced_backward(trace, tape, tensor, gradient, retain_graph, create_graph, inputs):
    """backward() inside a compile() trace: run eagerly, and add the reverse pass to the
    trace's graph (``Graph.grad`` of the same operations)."""
    from .trace import TraceError, _user_line
    if create_graph or tape.functions:
        raise TraceError(f"compile: {_user_line()}: backward with "
                         f"{'create_graph=True' if create_graph else 'a custom Function'} "
                         "inside a compiled step is not supported; compile the step without "
                         "it, or run it eagerly")
    targets = _targets(tape, inputs)
    if any(n.hooks for n in tape.order) or any(t._hooks for t in targets):
        raise TraceError(f"compile: {_user_line()}: gradient hooks run Python during "
                         "backward, which a compiled step cannot; run this step eagerly")
    versions = {}
    for key in tape.index:
        if isinstance(key, tuple) and len(key) == 3 and not key[2]:
            versions.setdefault(key[0], set()).add(key[1])
    for t in targets:
        if t.grad_fn is None and versions.get(id(t), {t._version_box.n}) != {t._version_box.n}:
            raise TraceError(f"compile: {_user_line()}: a leaf changed in place between its "
                             "use and backward(); the compiled step cannot tell the versions "
                             "apart")
    trace.backward(tensor, gradient, targets, lambda: backward_eager(
        tape, tensor, gradient, retain_graph, create_graph, inputs))


def _run_hooks(tape, hooked, by_id, targets, create_graph):
    """Latest first: each hook sees its tensor's gradient with every later hook's change
    already in it; a changed gradient sends the difference back (linearity of vᵀJ)."""
    for node in sorted(hooked, key=_sequence_of, reverse=True):
        t = node.retained()
        current = by_id[id(t)]
        g = current if isinstance(current, Tensor) else Tensor._make(np.asarray(current))
        for hook in list(node.hooks):
            replaced = hook(g)
            if replaced is not None:
                g = as_tensor(replaced)
        if g._data is not _value(current) and not np.array_equal(g._data, _value(current)):
            delta = Tensor._make(np.asarray(g._data - _value(current), t._data.dtype))
            earlier = [u for u in targets + [n.retained() for n in hooked]
                       if u is not t and (u.grad_fn is None or u.grad_fn.seq < node.seq)]
            sub = _Tape([t])
            reach = [u for u in {id(u): u for u in earlier}.values() if sub.slots_of(u)]
            if reach:
                more = run_backward([t], [delta], reach, True, create_graph, sub)
                for u, m in zip(reach, more):
                    by_id[id(u)] = by_id[id(u)] + m
        by_id[id(t)] = g if create_graph else g._data


def _accumulate(t, g, create_graph):
    if t._hooks and t.grad_fn is None:          # a leaf's hooks, then .grad
        g = g if isinstance(g, Tensor) else Tensor._make(np.asarray(g))
        for hook in list(t._hooks):
            replaced = hook(g)
            if replaced is not None:
                g = as_tensor(replaced)
    if t.grad_fn is not None and not t._retain:
        return                                   # hooked only, not retained
    value = g._data if isinstance(g, Tensor) else g
    if t._grad is None:
        t._grad = g if isinstance(g, Tensor) and (create_graph or g.grad_fn is None) \
            else Tensor._make(np.array(value))
    elif create_graph:
        t._grad = t._grad + g
    else:
        t._grad._data += value


def _targets(tape, inputs):
    if inputs is not None:
        return [as_tensor(t) for t in _as_list(inputs)]
    leaves = list(dict.fromkeys(t for t, _, _ in tape.leaves
                                if type(t) is not Node and t.requires_grad))
    retained = [n.retained() for n in tape.order
                if n.retained is not None and n.retained() is not None and n.retained()._retain]
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
    present = [t for t in inputs if tape.slots_of(t)]
    if len(present) != len(inputs) and not allow_unused:
        raise RuntimeError("One of the differentiated Tensors appears to not have been used "
                           "in the graph. Set allow_unused=True if this is the desired behavior.")
    grads = run_backward(outputs, grad_outputs, present, retain_graph, create_graph, tape) \
        if present else []
    by_id = {id(t): g for t, g in zip(present, grads)}
    return tuple(None if id(t) not in by_id else
                 (by_id[id(t)] if isinstance(by_id[id(t)], Tensor)
                  else Tensor._make(by_id[id(t)])) for t in inputs)


# ---- autograd.Function: a Python backward between compiled passes ---------------------------
class FunctionCtx:
    """The ``ctx`` of a custom Function: what forward keeps for backward."""

    def __init__(self, needs_input_grad):
        self.needs_input_grad = needs_input_grad
        self.saved_tensors = ()
        self.materialize_grads = True

    def save_for_backward(self, *tensors):
        self.saved_tensors = tuple(tensors)

    def mark_non_differentiable(self, *tensors):
        self.non_differentiable = {id(t) for t in tensors}

    def mark_dirty(self, *tensors):
        raise NotImplementedError("ctx.mark_dirty (in-place custom Functions) is not "
                                  "supported")

    def set_materialize_grads(self, value):
        self.materialize_grads = value


class _Call:
    """One application of a custom Function: its ctx, operands and output nodes."""

    def __init__(self, fn, ctx, operands, seq):
        self.fn, self.ctx, self.operands, self.seq = fn, ctx, operands, seq
        self.outputs = []


class Function:
    """``torch.autograd.Function``: subclass with static ``forward(ctx, …)`` and
    ``backward(ctx, *grads)``, call with ``.apply``.

    The compiled backward cannot run Python, so it *splits* there: the reverse pass runs
    compiled up to the Function's outputs, then its Python ``backward`` runs, then
    compiled passes continue from its inputs (one per input that needs a gradient)."""

    @staticmethod
    def forward(ctx, *args, **kwargs):
        raise NotImplementedError("a custom Function must define forward(ctx, ...)")

    @staticmethod
    def backward(ctx, *grad_outputs):
        raise NotImplementedError("a custom Function must define backward(ctx, ...)")

    @classmethod
    def apply(cls, *args):
        needs = tuple(isinstance(a, Tensor) and a.requires_grad for a in args)
        ctx = FunctionCtx(needs)
        from .tensor import no_grad
        with no_grad():
            result = cls.forward(ctx, *args)
        outs = result if isinstance(result, tuple) else (result,)
        if not (is_grad_enabled() and any(needs)):
            return result
        call = _Call(cls, ctx, [a if isinstance(a, Tensor) else None for a in args], None)
        wrapped = []
        for k, o in enumerate(outs):
            if not isinstance(o, Tensor) or o.dtype.kind != "f" or \
                    id(o) in getattr(ctx, "non_differentiable", ()):
                wrapped.append(o)
                continue
            t = Tensor._make(o._data)
            node = Node(f"{cls.__name__}Backward", ("function", cls, k), None,
                        [a for a in args if isinstance(a, Tensor)], o._data.dtype)
            node.custom = (call, k, o._data)
            call.outputs.append(node)
            t.grad_fn, t._requires_grad = node, True
            wrapped.append(t)
        call.seq = max(n.seq for n in call.outputs) if call.outputs else 0
        return tuple(wrapped) if isinstance(result, tuple) else wrapped[0]


def _backward_through_functions(tape, root, gradient, retain_graph, create_graph, inputs):
    """backward() when the graph holds custom Functions: compiled passes between their
    Python backwards, latest Function first (its output gradients are complete then)."""
    if create_graph:
        raise NotImplementedError("create_graph=True through a custom autograd.Function is "
                                  "not supported")
    totals = {}            # id(target) -> (target, summed gradient array)
    calls = {}

    def compiled_pass(t, seed, sub):
        leaves = _targets(sub, inputs)
        nodes = sub.functions
        grads = run_backward([t], [seed], leaves + nodes, True, False, sub)
        for target, g in zip(leaves + nodes, grads):
            prev = totals.get(id(target))
            totals[id(target)] = (target, g if prev is None else prev[1] + g)
        for n in nodes:
            calls[id(n.custom[0])] = n.custom[0]

    compiled_pass(root, gradient, tape)
    while calls:
        call = calls.pop(max(calls, key=lambda c: calls[c].seq))
        grads = [totals.pop(id(n), (None, None))[1] for n in call.outputs]
        grads = [Tensor._make(np.asarray(g)) if g is not None else
                 Tensor._make(np.zeros(n.custom[2].shape, n.custom[2].dtype))
                 for g, n in zip(grads, call.outputs)]
        result = call.fn.backward(call.ctx, *grads)
        result = result if isinstance(result, tuple) else (result,)
        if len(result) != len(call.operands):
            raise RuntimeError(f"function {call.fn.__name__}Backward returned an incorrect "
                               f"number of gradients (expected {len(call.operands)}, got "
                               f"{len(result)})")
        for x, g in zip(call.operands, result):
            if x is None or g is None or not x.requires_grad:
                continue
            g = as_tensor(g)
            if tuple(g.shape) != tuple(x.shape):
                raise RuntimeError(f"Function {call.fn.__name__}Backward returned an invalid "
                                   f"gradient: got shape {tuple(g.shape)}, expected "
                                   f"{tuple(x.shape)}")
            if x.grad_fn is None:
                prev = totals.get(id(x))
                totals[id(x)] = (x, g._data if prev is None else prev[1] + g._data)
            else:
                compiled_pass(x, g, _Tape([x]))
    if not retain_graph:
        for node in tape.order:
            node.freed = True
    for target, g in totals.values():
        if type(target) is not Node:
            _accumulate(target, np.asarray(g, dtype=target._data.dtype), False)
