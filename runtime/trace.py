"""compile: a whole training step — forward, backward, optimizer update — as one native call.

``step = symgrad.runtime.compile(fn)`` (or ``@compile``) runs ``fn`` eagerly on its first
call while *tracing* it: every tensor operation also builds its node in one
``symgrad.compiler.Graph`` (the builder each operation already carries for the compiled
backward), ``backward()`` adds the reverse pass with ``Graph.grad``, and
``optimizer.step()`` adds the update written once for numpy arrays and graph nodes alike
(``optim.py``).  The graph's outputs are what ``fn`` returns and every change it made to
tensors that outlive the call: parameters, their ``.grad``, optimizer buffers.  That graph
is compiled once; later calls with arguments of the same kind run it as one native call
and write the changes back in place.

What the trace reads is bound by *where it lives*, not by value: arguments by position,
tensors from before the call by identity, a gradient as "the .grad of p", an optimizer's
buffers as "its state for p", and the numbers optimizers compute in Python each step
(learning rate, bias corrections) as inputs recomputed by the optimizer itself before
each call.  So a learning-rate schedule needs no new compile.

Guards decide when a compiled trace still describes a call: the arguments' shapes,
dtypes and ``requires_grad``, Python numbers passed as arguments or read as globals or
closure cells by ``fn`` itself, whether each gradient exists, the optimizer's options
that change its code path (momentum or not, …), and the grad mode.  When one fails the
call is traced again (``SYMGRAD_LOG_COMPILES=1`` says which guard failed).  Reading a
tensor's value in Python inside ``fn`` (``if loss > 1``, ``loss.item()``) would make the
graph depend on this call's data: it raises :class:`TraceError` naming the line, as
``jax.jit`` does, rather than re-tracing per branch.  Constants in functions that ``fn``
calls (a module's ``forward``) are fixed when traced, as in ``jax.jit``.
"""
from __future__ import annotations

import builtins
import functools
import numbers
import os
import sys
import threading

import numpy as np

from symgrad.compiler import Graph
from symgrad.compiler.backend import fastcall
from symgrad.compiler.backend.stats import logger

from .tensor import Tensor, _mode

log = logger("symgrad.runtime")
MAX_TRACES = 8          # per compiled function, as torch.compile's cache_size_limit
_HERE = os.path.dirname(os.path.abspath(__file__))
_OURS = tuple(os.path.join(os.path.dirname(_HERE), d) + os.sep for d in ("runtime", "compiler"))


class TraceError(RuntimeError):
    """What ``fn`` does cannot be compiled into one graph (it reads a tensor's value in
    Python, draws random numbers, changes a view in place, …)."""


def _user_line() -> str:
    """``file:line: code`` of the innermost frame outside symgrad: the user's line."""
    frame = sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_OURS):
        frame = frame.f_back
    if frame is None:
        return "an unknown line"
    import linecache
    code = linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()
    return f"{frame.f_code.co_filename}:{frame.f_lineno}" + (f": {code}" if code else "")


# ---- where a graph input's value comes from at each call ------------------------------------
class Slot:
    """One graph input: ``read()`` gives its array at call time, ``check()`` whether it
    still has the shape and dtype the trace saw, ``write(value)`` stores a changed value."""

    def __init__(self, name, shape, dtype):
        self.name, self.shape, self.dtype = name, shape, dtype


class TensorSlot(Slot):
    """A tensor made before the call (a parameter, a buffer): by identity."""

    def __init__(self, name, tensor, dtype):
        super().__init__(name, tensor._data.shape, dtype)
        self.tensor, self.requires_grad = tensor, tensor._requires_grad
        self.stored = tensor._data.dtype

    def read(self):
        data = self.tensor._data
        return data if data.dtype == self.dtype else data.astype(self.dtype)

    def check(self):
        t = self.tensor
        return t._data.shape == self.shape and t._data.dtype == self.stored and \
            t._requires_grad == self.requires_grad

    def write(self, value):
        self.tensor._bump()
        np.copyto(self.tensor._data, value, casting="same_kind")

    def __repr__(self):
        return f"a tensor of shape {tuple(self.shape)}"


class GradSlot(Slot):
    """The ``.grad`` of tensor ``owner`` as it is when the call starts."""

    def __init__(self, name, owner):
        g = owner._grad
        super().__init__(name, g._data.shape, g._data.dtype)
        self.owner = owner

    def read(self):
        return self.owner._grad._data

    def check(self):
        g = self.owner._grad
        return g is not None and g._data.shape == self.shape and g._data.dtype == self.dtype

    def write(self, value):
        g = self.owner._grad
        g._bump()
        np.copyto(g._data, value)

    def __repr__(self):
        return f"the .grad of a tensor of shape {tuple(self.shape)}"


class StateSlot(Slot):
    """An optimizer's buffer ``key`` for parameter ``param``."""

    def __init__(self, name, optimizer, param, key):
        value = optimizer.state[param][key]
        super().__init__(name, value.shape, value.dtype)
        self.optimizer, self.param, self.key = optimizer, param, key

    def read(self):
        return self.optimizer.state[self.param][self.key]

    def check(self):
        value = self.optimizer.state.get(self.param, {}).get(self.key)
        return isinstance(value, np.ndarray) and value.shape == self.shape and \
            value.dtype == self.dtype

    def write(self, value):
        np.copyto(self.optimizer.state[self.param][self.key], value)

    def __repr__(self):
        return f"{type(self.optimizer).__name__}'s {self.key!r}"


# ---- the trace -------------------------------------------------------------------------------
class Trace:
    """One traced call of ``fn``: the graph, and what each input and output is bound to."""

    def __init__(self):
        self.g = Graph()
        self.exprs = {}          # id(tensor) -> its node now
        self.keep = []           # tensors whose ids are keys here (alive, so ids stay unique)
        self.alias = {}          # id(t) -> the tensor whose memory t is, whole (.data, detach)
        self.views = {}          # id(base) -> ids of views read from it
        self.stale = set()       # views whose base changed in place after they were read
        self.constants = set()   # tensors made in the call from Python data (torch.zeros…)
        self.opaque = {}         # tensors made in the call by an untraced operation
        self.dynamic = {}        # id(index array) -> the tensor it is the data of
        self.slots = []          # graph inputs bound to state, in order
        self.args = []           # graph inputs bound to the arguments' tensors
        self.bound = {}          # id(tensor) -> its slot
        self.owners = {}         # id(p) -> (p, its .grad when first touched)
        self.grad_of = {}        # id(grad tensor from before the call) -> owner
        self.grad_set = set()    # owners whose .grad the call assigned
        self.none_read = set()   # owners whose .grad being None at the start mattered
        self.actions = []        # (optimizer, param, group, names): scalars computed per call
        self.state_out = {}      # (id(opt), id(p), key) -> (slot, node)
        self.derived = []        # (sources, fn, names): inputs fn computes before each call
        self.unfinished = None   # why this trace is not compiled (state made in the call)

    # -- tensors and their nodes --
    def _keep(self, t):
        self.keep.append(t)

    def _root(self, t):
        return self.alias.get(id(t), t)

    def born(self, t):
        """``Tensor._make`` during the trace: untraced until ``record`` says otherwise."""
        source = self.dynamic.get(id(t._data))
        if source is not None:           # an index array taken from a tensor
            self.alias[id(t)] = self._root(source)
        else:
            self.opaque[id(t)] = True
        self._keep(t)

    def constant(self, t):
        """A tensor made from Python or numpy data in the call (its value is fixed)."""
        self.opaque.pop(id(t), None)
        self.constants.add(id(t))
        self._keep(t)

    def copy_of(self, t, source):
        self.constants.discard(id(t))
        self.set(t, self.expr(source), fresh=True)

    def untraced(self, t):
        self.constants.discard(id(t))
        self.opaque[id(t)] = True

    def alias_of(self, t, base):
        self.opaque.pop(id(t), None)
        self.alias[id(t)] = self._root(base)
        self._keep(t)

    def expr(self, t, as_index=False):
        root = self._root(t)
        e = self.exprs.get(id(root))
        if e is not None:
            return e
        if id(root) in self.stale:
            raise TraceError(f"compile: a view is read after its base tensor was changed in "
                             f"place ({_user_line()}); read the view again after the change")
        if id(root) in self.opaque:
            raise TraceError(
                f"compile: {_user_line()} uses a tensor made by an operation that reads values "
                "in Python (a comparison, argmax, a mask, an integer cast, …), which cannot "
                "be part of the compiled graph; compute it outside the compiled function and "
                "pass it as an argument")
        data = root._data
        if id(root) in self.constants:
            e = self.g.array(data) if data.ndim or as_index else \
                self.g.const(data.item(), data.dtype if data.dtype.kind == "f" else None)
        else:
            e = self._bind(root, as_index)
        self.exprs[id(root)] = e
        self._keep(root)
        return e

    def _bind(self, t, as_index):
        """A tensor from before the call: an input, by identity or as some tensor's .grad."""
        owner = self.grad_of.get(id(t))
        name = f"s{len(self.slots)}"
        if owner is not None:
            slot = GradSlot(name, owner)
        else:
            kind = t._data.dtype.kind
            dtype = np.int64 if as_index or kind in "iu" else \
                np.bool_ if kind == "b" else t._data.dtype
            slot = TensorSlot(name, t, dtype)
        self.slots.append(slot)
        self.bound[id(t)] = slot
        return self.g.input(name, slot.shape, slot.dtype)

    def argument(self, t, k):
        kind = t._data.dtype.kind
        dtype = np.int64 if kind in "iu" else np.bool_ if kind == "b" else t._data.dtype
        e = self.g.input(f"a{k}", t._data.shape, dtype)
        self.args.append(t)
        self.exprs[id(t)] = e
        self.opaque.pop(id(t), None)
        self._keep(t)

    def record(self, out, build, inputs, indices):
        """A traced operation: ``out``'s node from its operands' nodes."""
        args = [self.expr(t, k in indices) for k, t in enumerate(inputs)]
        e = build(self.g, *args)
        self.set(out, e, fresh=True)

    def set(self, t, e, fresh=False):
        value = t._data
        if tuple(e.shape) != value.shape or (
                value.dtype.kind == "f" and e.dtype != value.dtype):
            raise TraceError(
                f"compile: {_user_line()} gives {value.dtype} {list(value.shape)} when run but "
                f"{np.dtype(e.dtype)} {list(e.shape)} in the graph (a cast between float "
                "types, or an integer tensor used as numbers); cast outside the compiled "
                "function")
        root = self._root(t)
        if not fresh:
            if root is t and t._base is not None:
                raise TraceError(f"compile: {_user_line()} changes a view (a slice, reshape or "
                                 "transpose) in place; change the base tensor with indexing "
                                 "(base[...] = value) instead")
            for v in self.views.pop(id(root), ()):
                self.exprs.pop(v, None)
                self.stale.add(v)
        self.opaque.pop(id(root), None)
        self.exprs[id(root)] = e
        self._keep(root)
        if fresh and t._base is not None:
            base = self._root(t._base)
            self.views.setdefault(id(base), []).append(id(t))

    def filled(self, value, like):
        """The node of ``like`` after every element became ``value``."""
        value = np.asarray(value, dtype=like.dtype)
        if value.ndim == 0 and like.dtype.kind == "f":
            e = self.g.const(value.item(), like.dtype)
            return e.broadcast_to(like.shape) if like.shape else e
        return self.g.array(np.broadcast_to(value, like.shape).copy())

    def index_array(self, value, index):
        """``index``'s data is read as index values: if it changes per call, an index
        operand made from it is ``index``'s node, and nothing may depend on its values."""
        if id(self._root(index)) not in self.constants:
            self.dynamic[id(value)] = index
            self._keep(index)            # its array stays alive, so its id stays its own

    def derive(self, sources, fn, made):
        """Tensors ``made`` were computed in Python by ``fn`` from the values of tensors
        ``sources`` (a loss's class indices and weights from its targets): they become graph
        inputs that ``fn`` recomputes from the sources before each call, as the
        optimizers' numbers are.  A source must be an argument or a tensor from before the
        call (not one computed in it); tensors from Python data make constants."""
        bound = []
        for t in sources:
            root = self._root(t) if isinstance(t, Tensor) else None
            if root is None or id(root) in self.constants:
                bound.append(("constant", t._data if root is not None else np.asarray(t)))
                continue
            e = self.expr(root)
            k = next((k for k, a in enumerate(self.args) if a is root), None)
            if k is not None:
                bound.append(("argument", k))
            elif id(root) in self.bound and _is_input(e, self.bound[id(root)]):
                bound.append(("slot", self.bound[id(root)]))
            else:
                raise TraceError(
                    f"compile: {_user_line()} needs the values of a tensor computed in the call "
                    "(here as class indices or weights); pass it as an argument, or compute it "
                    "outside the compiled function")
        if all(kind == "constant" for kind, _ in bound):
            for t in made:
                self.constant(t)
            return
        names = []
        for t in made:
            name = f"d{len(self.derived)}_{len(names)}"
            kind = t._data.dtype.kind
            e = self.g.input(name, t._data.shape, np.int64 if kind in "iu" else t._data.dtype)
            names.append(name)
            self.opaque.pop(id(t), None)
            self.exprs[id(t)] = e
            self._keep(t)
        self.derived.append((bound, fn, names))

    def static_index(self, parts, what):
        """Refuse an index whose values decide the graph's shape or layout."""
        for p in parts:
            if isinstance(p, np.ndarray) and id(p) in self.dynamic:
                raise TraceError(
                    f"compile: {_user_line()} uses {what} whose values come from this call's "
                    "data; the compiled graph's shapes cannot depend on data. Use an integer "
                    "index tensor, torch.where, or do it outside the compiled function")

    def value_read(self, t, what):
        """Python reads ``t``'s value (``.item()``, ``if t:``): only a constant's is fixed."""
        if id(self._root(t)) in self.constants:
            return
        raise TraceError(
            f"compile: {_user_line()} reads a tensor's value in Python ({what}); the compiled "
            "step is one graph for every call, so its Python code cannot depend on the data. "
            "Return the tensor and read it after the call, or use torch.where for a choice "
            "per element")

    # -- gradients --
    def touch_grad(self, p, setting=False):
        """``p.grad`` is read or set: ``p`` owns a gradient the call may change."""
        if setting:
            self.grad_set.add(id(p))
        if id(p) not in self.owners:
            g = p._grad
            self.owners[id(p)] = (p, g)
            self._keep(p)
            if g is not None and id(g) not in self.exprs and id(g) not in self.opaque and \
                    id(g) not in self.constants:
                self.grad_of[id(g)] = p
                self._keep(g)

    def backward(self, root, gradient, targets, eager):
        """``root.backward(gradient)``: eagerly, and each target's gradient as a node."""
        seed = None
        if gradient is not None:
            from .tensor import as_tensor
            seed = self.expr(as_tensor(gradient))
        elif root._data.ndim:
            seed = self.g.const(1.0, root._data.dtype).broadcast_to(root._data.shape)
        out = self.expr(root)
        wrt = [self.expr(t) for t in targets]
        for t in targets:
            self.touch_grad(t)
            if t._grad is None and id(t) not in self.grad_set:
                self.none_read.add(id(t))    # accumulates only if .grad is None then too
            self.grad_set.add(id(t))
        before = {id(t): t._grad for t in targets}
        eager()
        grads = self.g.grad([out], wrt, None if seed is None else [seed])
        for t, g in zip(targets, grads):
            prev = before[id(t)]
            total = g if prev is None else self.expr(prev) + g
            self.set(t._grad, total, fresh=t._grad is not prev)

    # -- optimizers --
    def optimizer_update(self, opt, p, state, group, names):
        """Parameter ``p``'s update as nodes: ``opt._arrays`` on graph nodes, its per-step
        numbers as inputs the optimizer recomputes before every call."""
        self.touch_grad(p)
        k = len(self.actions)
        self.actions.append((opt, p, group, names, _optimizer_guard(opt, group, state)))
        x = self.expr(p)
        dtype = p._data.dtype
        scalars = {n: self.g.input(f"o{k}_{n}", (), dtype) for n in names}
        bufs = {}
        for key, value in state.items():
            if isinstance(value, np.ndarray):
                slot = StateSlot(f"o{k}_buf_{key}", opt, p, key)
                self.slots.append(slot)
                bufs[key] = self.g.input(slot.name, slot.shape, slot.dtype)
                self.state_out[(id(opt), id(p), key)] = [slot, bufs[key]]
        return x, self.expr(p._grad), bufs, scalars

    def optimizer_result(self, opt, p, new_x, new_bufs):
        self.set(p, new_x)
        for key, node in new_bufs.items():
            self.state_out[(id(opt), id(p), key)][1] = node


def _optimizer_guard(opt, group, state) -> tuple:
    """What decides the update's code path (the numbers themselves are inputs)."""
    return type(opt), opt._structure(group, state)


# ---- a compiled trace and its guards ------------------------------------------------------------
class Compiled:
    """A finished trace: the native function, its input bindings, what it writes back."""

    def __init__(self, trace: Trace, result, globals_seen, grad_mode):
        self.slots = trace.slots
        self.globals_seen = globals_seen
        self.grad_mode = grad_mode
        self.actions = trace.actions
        self.arg_dtypes = [trace.exprs[id(t)].dtype for t in trace.args]
        self.template, nodes = _template(result, trace)
        self.n_returned = len(nodes)
        # after the call: (write, reuse) per result beyond the returned ones, where
        # ``reuse`` says the result is copied into state (so one array serves every call)
        self.writes, self.reuse, self.drops, self.checks = [], [], [], []

        def written(node, write, reuse=True):
            nodes.append(node)
            self.writes.append(write)
            self.reuse.append(reuse)
        for slot in trace.slots:                  # changed state, written back in place
            if isinstance(slot, TensorSlot):
                e = trace.exprs.get(id(slot.tensor))
                if e is not None and not _is_input(e, slot):
                    written(e, slot.write)
        for slot, node in trace.state_out.values():
            if not _is_input(node, slot):
                written(node, slot.write)
        self.none = [p for p, _ in trace.owners.values() if id(p) in trace.none_read]
        for p, g0 in trace.owners.values():       # gradients as the call leaves them
            g = p._grad
            if g is None:
                if g0 is not None:
                    self.drops.append(functools.partial(_drop_grad, p))
                continue
            if g is g0:                           # the same tensor: changed in place, or not
                e, slot = trace.exprs.get(id(g)), trace.bound.get(id(g))
                if e is None or (slot is not None and _is_input(e, slot)):
                    continue
                if slot is None:                  # changed without being read: must exist
                    slot = GradSlot("", p)
                    self.checks.append(slot)
                written(e, slot.write)
                continue
            e = trace.exprs.get(id(trace._root(g)))
            written(trace.expr(g) if e is None else e, functools.partial(_new_grad, p),
                    reuse=False)
        seen = set()
        self.copies = []          # results that repeat an earlier one: each gets its own array
        for o in nodes:
            self.copies.append(o.id in seen)
            seen.add(o.id)
        inputs = [trace.exprs[id(t)] for t in trace.args] + \
            [trace.g.node(s.name) for s in trace.slots] + \
            [trace.g.node(f"o{k}_{n}") for k, (_, _, _, names, _) in enumerate(trace.actions)
             for n in names] + \
            [trace.g.node(n) for _, _, names in trace.derived for n in names]
        self.derived = trace.derived
        self.fn = trace.g.compile(nodes, inputs=inputs) if nodes else None
        self.size = len(trace.g)
        self.dtypes = [np.dtype(o.dtype) for o in nodes]
        self.plain_args = all(t._data.dtype == d for t, d in zip(trace.args, self.arg_dtypes))
        self.plain_slots = [s.tensor for s in self.slots] if all(
            type(s) is TensorSlot and s.dtype == s.stored for s in self.slots) else None
        self.direct = self.fn.direct(self._upgraded) if self.fn is not None else None
        self.to_fix = [k for k, copy in enumerate(self.copies) if copy or (
            self.direct is not None and self.direct[2][k][0] == "s")]
        if self.direct is not None:
            # results written back into state go through arrays kept for the next call;
            # results handed out (returned tensors, new gradients) are fresh each call
            kept = {j for k, (tag, j) in enumerate(self.direct[2])
                    if tag == "a" and k >= self.n_returned and self.reuse[k - self.n_returned]}
            self.kept = [np.empty(shape, dtype) if j in kept else None
                         for j, (shape, dtype) in enumerate(self.direct[1])]
        self.fast = _specialise(self) if self.direct is not None else None

    def _upgraded(self):
        """The compiled function's optimised code is in: call it from now on (its
        signature, so the outputs' specs and placement, are the same)."""
        self.direct = self.fn.direct()
        self.fast = _specialise(self)

    def holds(self) -> str | None:
        """None when this trace describes the call about to run, else why not."""
        if _mode.enabled != self.grad_mode:
            return "grad mode changed"
        for slot in self.slots:
            if not slot.check():
                return f"{slot!r} changed shape, dtype or requires_grad"
        for slot in self.checks:
            if not slot.check():
                return f"{slot!r} is no longer there"
        for p in self.none:
            if p._grad is not None:
                return "a .grad that backward() created is there already (it would add to it)"
        for opt, p, group, _, guard in self.actions:
            if _optimizer_guard(opt, group, opt.state.get(p, {})) != guard:
                return f"{type(opt).__name__}'s options or state changed its code path"
        for where, name, value in self.globals_seen:
            now = where.get(name, _MISSING) if isinstance(where, dict) else \
                where.cell_contents
            if type(now) is not type(value) or now != value:
                return f"{name} changed from {value!r} to {now!r}"
        return None

    def run(self, arg_tensors):
        """The call, with the guards already checked (``holds``)."""
        if self.plain_args:
            arrays = [t._data for t in arg_tensors]
        else:
            arrays = [t._data if t._data.dtype == d else t._data.astype(d)
                      for t, d in zip(arg_tensors, self.arg_dtypes)]
        if self.plain_slots is not None:           # tensors by identity, read as they are
            arrays += [t._data for t in self.plain_slots]
        else:
            arrays += [s.read() for s in self.slots]
        derived = []              # first: it may raise (a class index out of range)
        for sources, fn, _ in self.derived:
            derived += fn(*[_source(kind, where, arg_tensors) for kind, where in sources])
        for opt, p, group, names, _ in self.actions:
            given = opt._scalars(opt.state[p], group)     # advances its step count
            arrays += [given[n] for n in names]
        arrays += derived
        return self._finish(self._results(arrays))

    def _finish(self, results):
        """Write the results back and make the returned tensors."""
        n = self.n_returned
        for write, value in zip(self.writes, results[n:]):
            write(value)
        for drop in self.drops:
            drop()
        if self.template is _Out:
            return Tensor._make(results[0])
        return _fill(self.template, iter([Tensor._make(r) for r in results[:n]]))

    def _results(self, arrays) -> list:
        """The graph's outputs, as arrays of their dtypes, each its own array."""
        if self.fn is None:
            return []
        scalars = fastcall.FALLBACK
        if self.direct is not None:
            call, specs, placement = self.direct
            outs = [np.empty(shape, dtype) if kept is None else kept
                    for kept, (shape, dtype) in zip(self.kept, specs)]
            scalars = call(*arrays, *outs)
        if scalars is fastcall.FALLBACK:
            results = self.fn(*arrays)
            results = [results] if len(self.fn.outputs) == 1 else list(results)
            return [np.array(r, d) if c or type(r) is not np.ndarray else r
                    for r, c, d in zip(results, self.copies, self.dtypes)]
        else:
            results = [outs[j] if tag == "a" else scalars[j] for tag, j in placement]
        for k in self.to_fix:                # scalars come back as floats; repeats
            r = results[k]
            results[k] = np.array(r, self.dtypes[k])
        return results


_MISSING = object()
_MISS = object()            # what a specialised call returns when a guard fails


def _specialise(c: Compiled):
    """``c.holds()`` and ``c.run()`` written out as one function for this trace (as
    namedtuple writes its classes): every guard, read and write-back a line of its own,
    no loops.  Returns ``_MISS`` when a guard fails; the generic path then says which."""
    ns = {"_mode": _mode, "MISS": _MISS, "MISSING": _MISSING, "EMPTY": {}, "np": np,
          "empty": np.empty, "make": Tensor._make, "FALLBACK": fastcall.FALLBACK,
          "finish": c._finish, "slow": c._results, "fill": _fill, "template": c.template,
          "call": c.direct[0]}
    code = ["def fast(args):", f"    if _mode.enabled is not {bool(c.grad_mode)}:",
            "        return MISS"]
    emit = code.append         # one line of the generated function

    def fail_unless(condition):
        emit(f"    if not ({condition}):")
        emit("        return MISS")
    for k, slot in enumerate(c.slots):
        ns[f"S{k}"] = slot
        if type(slot) is TensorSlot:
            ns[f"T{k}"], ns[f"SH{k}"], ns[f"ST{k}"] = slot.tensor, slot.shape, slot.stored
            emit(f"    d{k} = T{k}._data")
            fail_unless(f"d{k}.shape == SH{k} and d{k}.dtype == ST{k} and "
                        f"T{k}._requires_grad is {bool(slot.requires_grad)}")
            if slot.dtype != slot.stored:
                ns[f"D{k}"] = slot.dtype
                emit(f"    d{k} = d{k}.astype(D{k})")
        else:
            fail_unless(f"S{k}.check()")
            emit(f"    d{k} = S{k}.read()")
    for k, slot in enumerate(c.checks):
        ns[f"C{k}"] = slot
        fail_unless(f"C{k}.check()")
    for k, p in enumerate(c.none):
        ns[f"N{k}"] = p
        fail_unless(f"N{k}._grad is None")
    for k, (opt, p, group, _, (kind, structure)) in enumerate(c.actions):
        ns.update({f"O{k}": opt, f"P{k}": p, f"G{k}": group, f"OT{k}": kind,
                   f"STR{k}": structure})
        fail_unless(f"type(O{k}) is OT{k} and "
                    f"O{k}._structure(G{k}, O{k}.state.get(P{k}, EMPTY)) == STR{k}")
    for k, (where, name, value) in enumerate(c.globals_seen):
        ns.update({f"W{k}": where, f"V{k}": value, f"VT{k}": type(value)})
        now = f"W{k}.get({name!r}, MISSING)" if isinstance(where, dict) else \
            f"W{k}.cell_contents"
        emit(f"    now = {now}")
        fail_unless(f"type(now) is VT{k} and now == V{k}")
    operands = []
    for k, d in enumerate(c.arg_dtypes):
        emit(f"    a{k} = args[{k}]._data")
        if not c.plain_args:
            ns[f"AD{k}"] = d
            emit(f"    if a{k}.dtype != AD{k}:")
            emit(f"        a{k} = a{k}.astype(AD{k})")
        operands.append(f"a{k}")
    operands += [f"d{k}" for k in range(len(c.slots))]
    derived = []          # computed first: it may raise (a class index out of range)
    for k, (sources, fn, names) in enumerate(c.derived):
        ns[f"DF{k}"] = fn
        read = []
        for j, (kind, where) in enumerate(sources):
            ns[f"DS{k}_{j}"] = where
            read.append(f"args[{where}]._data" if kind == "argument" else
                        f"DS{k}_{j}.read()" if kind == "slot" else f"DS{k}_{j}")
        emit(f"    x{k} = DF{k}({', '.join(read)})")
        derived += [f"x{k}[{j}]" for j in range(len(names))]
    for k, (opt, p, group, names, _) in enumerate(c.actions):
        emit(f"    q{k} = O{k}._scalars(O{k}.state[P{k}], G{k})")     # advances its step
        operands += [f"q{k}[{n!r}]" for n in names]
    operands += derived
    _, specs, placement = c.direct
    for j, (kept, (shape, dtype)) in enumerate(zip(c.kept, specs)):
        ns[f"K{j}" if kept is not None else f"SP{j}"] = kept if kept is not None else \
            (shape, dtype)
        emit(f"    o{j} = K{j}" if kept is not None else f"    o{j} = empty(*SP{j})")
    outs = "".join(f", o{j}" for j in range(len(specs)))
    emit(f"    r = call({', '.join(operands)}{outs})")
    emit("    if r is FALLBACK:")
    emit(f"        return finish(slow([{', '.join(operands)}]))")
    results = []
    for k, (tag, j) in enumerate(placement):
        value = f"o{j}" if tag == "a" else f"r[{j}]"
        if k in c.to_fix:
            ns[f"R{k}"] = c.dtypes[k]
            value = f"np.array({value}, R{k})"
        emit(f"    v{k} = {value}")
        results.append(f"v{k}")
    n = c.n_returned
    for k, write in enumerate(c.writes):
        value = results[n + k]
        slot = getattr(write, "__self__", None)
        if isinstance(write, functools.partial) and write.func is _new_grad:
            ns[f"NG{k}"] = write.args[0]
            emit(f"    NG{k}._grad = make({value})")
        elif type(slot) is TensorSlot and slot.dtype == slot.stored:
            ns[f"WT{k}"] = slot.tensor           # _bump, inlined for a tensor no node reads
            emit(f"    box = WT{k}._version_box")
            emit("    if box.users:")
            emit(f"        WT{k}._bump()")
            emit("    else:")
            emit("        box.n += 1")
            emit(f"    WT{k}._data[...] = {value}")
        else:
            ns[f"WR{k}"] = write
            emit(f"    WR{k}({value})")
    for k, drop in enumerate(c.drops):
        ns[f"DR{k}"] = drop.args[0]
        emit(f"    DR{k}._grad = None")
    if c.template is _Out:
        emit(f"    return make({results[0]})")
    else:
        returned = "".join(f"make({v}), " for v in results[:n])
        emit(f"    return fill(template, iter(({returned})))")
    exec(builtins.compile("\n".join(code) + "\n", "<symgrad compiled step>", "exec"), ns)
    return ns["fast"]


def _source(kind, where, arg_tensors):
    """A derived input's source array at call time (see ``Trace.derive``)."""
    return arg_tensors[where]._data if kind == "argument" else \
        where.read() if kind == "slot" else where


def _is_input(e, slot) -> bool:
    return e.op == "input" and e.name == slot.name


def _drop_grad(p):
    p._grad = None


def _new_grad(p, value):
    p._grad = Tensor._make(value)


def _map(x, is_leaf, fn):
    """``x`` (nested lists, tuples, named tuples, dicts) with ``fn`` applied to its leaves."""
    if is_leaf(x):
        return fn(x)
    if isinstance(x, (list, tuple)):
        items = [_map(v, is_leaf, fn) for v in x]
        return type(x)(items) if type(x) in (list, tuple) else type(x)(*items)
    if isinstance(x, dict):
        return {k: _map(v, is_leaf, fn) for k, v in x.items()}
    return x


def _is_tensor(x):
    return isinstance(x, Tensor)


class _Out:
    """Where a returned tensor goes in the result's structure."""


def _template(result, trace):
    """``result`` with each tensor replaced by a marker, and the tensors' nodes."""
    nodes = []

    def mark(t):
        nodes.append(trace.expr(t))
        return _Out
    return _map(result, _is_tensor, mark), nodes


def _fill(template, values):
    return _map(template, lambda x: x is _Out, lambda _: next(values))


def _detached(result):
    """Returned tensors, as every call returns them: detached (backward already ran)."""
    return _map(result, _is_tensor, lambda t: t.detach() if t._requires_grad else t)


# ---- the user's entry point ------------------------------------------------------------------
def _flatten(args, kwargs):
    """The tensors in ``args``/``kwargs`` (nested lists, tuples, dicts), and a key of
    everything else a trace depends on: structure, shapes, dtypes, Python values."""
    tensors, key = [], []

    def walk(x):
        if type(x) is Tensor or isinstance(x, Tensor):
            tensors.append(x)
            key.append((x._data.shape, x._data.dtype.char, x._requires_grad))
        elif isinstance(x, (list, tuple)):
            key.append((type(x), len(x)))
            for v in x:
                walk(v)
        elif isinstance(x, dict):
            key.append((dict, tuple(x)))
            for v in x.values():
                walk(v)
        elif isinstance(x, np.ndarray):
            raise TypeError("a compiled function takes tensors, Python numbers and nests of "
                            "them; wrap numpy arrays with torch.from_numpy(...) (an array "
                            "inside the step would be a constant)")
        else:
            try:
                hash(x)
            except TypeError:
                raise TypeError(f"a compiled function's argument of type {type(x).__name__} "
                                "is neither a tensor nor a hashable Python value") from None
            key.append((type(x), x))
    walk(args)
    walk(kwargs)
    return tensors, tuple(key)


def _python_constants(fn):
    """(where, name, value) of the Python numbers ``fn``'s own code reads from its globals
    and closure: a change of one means a new trace (the trace fixed its value)."""
    fn = getattr(fn, "__func__", fn)
    code = getattr(fn, "__code__", None)
    if code is None:                      # a module or another callable: its forward/__call__
        target = getattr(type(fn), "forward", None) or getattr(type(fn), "__call__", None)
        return _python_constants(target) if target is not None and target is not fn else []
    seen = []
    glob = getattr(fn, "__globals__", {})
    for name in code.co_names:
        value = glob.get(name, _MISSING)
        if isinstance(value, (numbers.Number, str)) and not isinstance(value, np.ndarray):
            seen.append((glob, name, value))
    for name, cell in zip(code.co_freevars, fn.__closure__ or ()):
        try:
            value = cell.cell_contents
        except ValueError:
            continue
        if isinstance(value, (numbers.Number, str)):
            seen.append((cell, name, value))
    return seen


class CompiledStep:
    """``compile(fn)``: see the module's docstring."""

    def __init__(self, fn):
        self.fn = fn
        functools.update_wrapper(self, fn, updated=())
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)
        self.entries: dict = {}       # argument key -> [Compiled], most recent first
        self.traces = 0
        self._lock = threading.Lock()
        self._eager_warned = False

    def __call__(self, *args, **kwargs):
        if _mode.trace is not None:             # inside another compiled step's trace: inline
            return self.fn(*args, **kwargs)
        if not kwargs and all(type(a) is Tensor for a in args):     # the common case
            tensors = args
            key = (tuple([(a._data.shape, a._data.dtype.char, a._requires_grad)
                          for a in args]), _mode.enabled)
        else:
            tensors, key = _flatten(args, kwargs)
            key = (key, _mode.enabled)
        reason = "first call"
        entries = self.entries.get(key)
        if entries is not None:
            for k, entry in enumerate(entries):
                if entry.fast is not None:
                    result = entry.fast(tensors)
                    if result is not _MISS:
                        if k:
                            entries.insert(0, entries.pop(k))
                        return result
                why = entry.holds()
                if why is None:
                    if k:
                        entries.insert(0, entries.pop(k))
                    return entry.run(tensors)
                reason = why
        elif self.entries:
            reason = "the arguments' shapes, dtypes, requires_grad or Python values changed"
        return self._trace(args, kwargs, tensors, key, reason)

    def _trace(self, args, kwargs, tensors, key, reason):
        if self.traces >= MAX_TRACES:
            if not self._eager_warned:
                self._eager_warned = True
                log.warning("compile %s: %d traces made; running eagerly from now on (%s)",
                            self.__name__, self.traces, reason)
            return self.fn(*args, **kwargs)
        trace = Trace()
        for k, t in enumerate(tensors):
            trace.argument(t, k)
        constants = _python_constants(self.fn)
        _mode.trace = trace
        try:
            result = self.fn(*args, **kwargs)
        finally:
            _mode.trace = None
        if trace.unfinished:
            log.info("compile %s: traced (%s) but not compiled: %s; the next call traces "
                     "again", self.__name__, reason, trace.unfinished)
            return _detached(result)
        entry = Compiled(trace, result, constants, _mode.enabled)
        self.traces += 1
        self.entries.setdefault(key, []).insert(0, entry)
        log.info("compile %s: trace #%d (%s): %d graph nodes, %d inputs bound to state, "
                 "%d optimizer updates", self.__name__, self.traces, reason, entry.size,
                 len(entry.slots), len(entry.actions))
        return _detached(result)


def compile(fn=None, **options):
    """``torch.compile`` for symgrad: ``step = compile(fn)`` or ``@compile``.

    The first call runs ``fn`` eagerly while tracing it into one graph of its forward
    pass, ``backward()`` and optimizer updates; later calls with arguments of the same
    kind run that graph as one native call, updating parameters, gradients and optimizer
    state in place.  Options torch.compile takes (``mode``, ``fullgraph``, ``dynamic``,
    ``backend``) are accepted and have no effect: symgrad always compiles the whole
    step."""
    unknown = set(options) - {"mode", "fullgraph", "dynamic", "backend", "options",
                              "disable"}
    if unknown:
        raise TypeError(f"compile() got unexpected keyword arguments {sorted(unknown)}")
    if fn is None:
        return lambda f: compile(f, **options)
    if options.get("disable"):
        return fn
    if not callable(fn):
        raise TypeError(f"compile() takes a function or module, got {type(fn).__name__}")
    return CompiledStep(fn)
