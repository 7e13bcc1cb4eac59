"""NativeFunction: checks arguments and calls compiled entry points (forward, vjp).

It knows slots, shapes and dtypes, not graphs: what an entry computes and how its code is
built come from a *source* (the compiler's compile plan) through two calls,
``source.build(kind)`` (→ an object with ``address``, ``engine``) and, for export,
``source.export_ir(name)``.  ``symgrad.compiler.function.CompiledFunction`` adds the
graph's side (kernels, IR, the work graph).
"""
from __future__ import annotations

import concurrent.futures
import ctypes
import functools
import numbers
import reprlib
import sys
import threading
import weakref
from dataclasses import dataclass, field

import numpy as np

from . import fastcall, jit


def _dtype_name(dtype) -> str:
    return np.dtype(dtype).name


# A dense Jacobian or Hessian past this many elements (2 GiB of float64) is refused.
MAX_DENSE = 2**28
# A first call is answered by the VJP entry where that entry makes at most this many
# element operations a call (the pipeline's ``Artifact.work``; unknown for code from the
# cache): there a reverse pass costs less than compiling the forward entry.  A heavier
# call (W3's 10^7-element sums) would spend more on the reverse pass, and on gradient
# arrays nobody asked for, than the compile it saves.
FIRST_CALL_WORK = 10**6
# A dense Jacobian or Hessian asked for again (a solver's every iteration) of this many
# sweeps or more runs them as batches of SWEEP_CHUNK in one native call each (the entry's
# batch form, compiled on that second request) instead of one call each.
BATCHED_SWEEPS = 8
SWEEP_CHUNK = 256


def _check_dense(m: int, n: int, what: str) -> None:
    if m * n > MAX_DENSE:
        raise ValueError(f"a dense {what} of {m}×{n} would hold {m * n:.3g} numbers; pass "
                         "sparse=True for the structural nonzeros only, or use vjp()/jvp() "
                         "with the vectors you need")


def _stacked(values, size: int) -> np.ndarray:
    """Results (arrays or numbers) flattened into one vector of ``size``."""
    if not values:
        return np.zeros(size)
    return np.concatenate([np.asarray(v, np.float64).reshape(-1) for v in values])


class ArgumentError(ValueError):
    """An argument of a compiled function has the wrong shape, dtype or kind."""


_MISSING = object()


def _swap(block, lead: int) -> np.ndarray:
    """``block`` of shape ``a + b`` (``a`` its first ``lead`` dims) as ``b + a``, contiguous."""
    return np.transpose(block, [*range(lead, block.ndim), *range(lead)]).copy()


def _coerce_index(value, name: str, shape: tuple, bound) -> np.ndarray:
    """An integer index array of ``shape`` whose entries lie in [-bound, bound)."""
    try:
        read = np.asarray(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name}: cannot read {reprlib.repr(value)} as integers ({err})") \
            from None
    if read.dtype.kind not in "iu":
        raise TypeError(f"{name}: an index input takes integers, got dtype {read.dtype}")
    if read.shape != shape:
        raise ArgumentError(f"{name}: expected shape {shape}, got {read.shape}")
    if bound is not None and read.size and (read.min() < -bound or read.max() >= bound):
        bad = read[(read < -bound) | (read >= bound)].flat[0]
        raise IndexError(f"{name}: index {bad} is out of bounds for an axis of size {bound}")
    return np.ascontiguousarray(read, dtype=np.int64)


def is_masked(value) -> bool:
    """Whether ``value`` is a numpy masked array.  numpy imports ``numpy.ma`` on first
    use (50 ms); a value can only be one once something has imported it."""
    ma = sys.modules.get("numpy.ma")
    return ma is not None and isinstance(value, ma.MaskedArray)


def _coerce_mask(value, name: str, shape: tuple) -> np.ndarray:
    """A bool array (or a bool) of ``shape``: numbers are refused, not read as truth."""
    if is_masked(value):
        raise TypeError(f"{name}: masked arrays are not supported; pass value.filled(False)")
    read = np.asarray(value) if isinstance(value, (np.ndarray, list, tuple, bool, np.bool_)) \
        else None
    if read is None or read.dtype.kind != "b":
        got = f"dtype {read.dtype}" if read is not None else type(value).__name__
        raise TypeError(f"{name}: a bool input takes bools, got {got}; for numbers, pass "
                        "a comparison such as x != 0")
    if read.shape != shape:
        raise ArgumentError(f"{name}: expected shape {shape}, got {read.shape}")
    return np.ascontiguousarray(read)


def _coerce(value, name: str, shape: tuple, dtype: np.dtype) -> np.ndarray:
    """``value`` as a C-contiguous array of exactly ``shape`` and ``dtype``, or a clear error.

    Every check reads the plain ndarray that native code will get, never the user's object:
    a subclass may override ``.shape`` or ``.dtype`` with anything."""
    if is_masked(value):
        raise TypeError(f"{name}: masked arrays are not supported (the mask would be "
                        "ignored); pass value.filled(...) or value.data")
    if isinstance(value, np.ndarray):
        value = np.asarray(value)        # the base-class view: its real shape and dtype
        if value.dtype != dtype:
            if value.dtype.kind != "f":
                raise TypeError(f"{name}: expected a {_dtype_name(dtype)} array, got dtype "
                                f"{value.dtype}; convert it with .astype(np.{_dtype_name(dtype)})")
            value = value.astype(dtype)
    elif isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, list, tuple)):
        raise TypeError(f"{name}: expected a real number or a {_dtype_name(dtype)} array of shape "
                        f"{shape}, got {type(value).__name__}")
    else:
        try:
            if isinstance(value, (list, tuple)):
                # numbers only: numpy would read "1.5" and True as numbers too
                read = np.asarray(value)
                if read.dtype.kind not in "fiu":
                    what = "bools" if read.dtype.kind == "b" else "not real numbers"
                    raise TypeError(f"the elements are {what}")
                value = read.astype(dtype, copy=False)
            else:
                value = np.asarray(value, dtype=dtype)
        except (TypeError, ValueError, OverflowError) as err:
            raise TypeError(f"{name}: cannot read {reprlib.repr(value)} as "
                            f"{_dtype_name(dtype)} numbers ({err})") from None
    if value.shape != shape:
        raise ArgumentError(f"{name}: expected shape {shape}, got {value.shape}")
    return np.ascontiguousarray(value)


@dataclass(frozen=True)
class Signature:
    """What a compiled function takes and gives: (name, shape, dtype) per slot, and which
    result of its entries each output and gradient is (``*_keys``: keys of the results)."""
    inputs: list
    outputs: list
    wrt: list
    seeds: list
    out_keys: list
    grad_keys: list
    # integer index input name -> the size of the axes it indexes (entries in [-n, n))
    bounds: dict = field(default_factory=dict)


@dataclass(frozen=True)
class EntrySpec:
    """One entry point: the keys of the results it writes, in pointer-table order after
    its arguments, and their (shape, dtype)."""
    kind: str              # "forward" | "vjp" | "jvp" | "hvp"
    results: tuple
    result_types: tuple
    constants: tuple = ()  # arrays passed after the arguments (the graph's array constants)


def _upgraded(ref, kind, done):
    function = ref()
    if function is None or done.cancelled() or done.exception() is not None \
            or done.result() is None:
        return
    function._adopt(kind, done.result())


class NativeFunction:
    """Native forward and vector–Jacobian product.

    ``f(*inputs, **inputs)`` returns the outputs; ``f.vjp(*inputs, seed=v)`` returns
    ``(outputs, gradients)`` with one gradient per ``wrt`` node: ``vᵀJ``.
    """

    def __init__(self, signature: Signature, entries: dict, source):
        self.signature, self.source, self._specs = signature, source, entries
        self.inputs, self.outputs = signature.inputs, signature.outputs
        self.wrt, self.seeds = signature.wrt, signature.seeds
        self._out_ids, self._grad_ids = signature.out_keys, signature.grad_keys
        self._names = {n: k for k, (n, _, _) in enumerate(self.inputs)}
        self._artifacts, self._entries, self._fast = {}, {}, {}
        self._engines = []               # CodeEngines holding this function's code
        self._told = []                  # weak methods: direct() callers to tell of tier 2
        self._lock = threading.Lock()
        self._tangent_lock = threading.Lock()     # forward mode is added on first use
        self._tangent_ids = {}
        self._jacobians = 0              # dense Jacobians asked for (see _forward_pays)
        self._swept = set()              # entries dense sweeps have run (see _sweeps)
        self._called = False             # called once (see _value_by_vjp)
        self._default_seed = (1.0,) if len(self.seeds) == 1 and self.seeds[0][1] == () \
            and self.seeds[0][2] == np.float64 else None
        # compile what will be called: the VJP (or, compiled for forward mode, the JVP)
        # when there is one; the forward on its second call (see _value_by_vjp)
        self._load("vjp" if "vjp" in entries else "jvp" if "jvp" in entries else "forward")

    def _load(self, kind):
        """Compile (or take from the cache) one entry point and set up its call paths."""
        if kind in self._artifacts:       # set last: a loaded entry takes no lock
            return
        with self._lock, jit.collector_paused():     # (the build and the call glue)
            if kind in self._artifacts:
                return
            artifact = self.source.build(kind)
            self._engines.append(artifact.engine)
            self._use(kind, artifact.address)
            self._artifacts[kind] = artifact
        # the second tier starts once the call paths are made (their glue is LLVM work)
        start, artifact.start_upgrade = getattr(artifact, "start_upgrade", None), None
        if start is not None:
            artifact.upgrade = start()
        upgrade = getattr(artifact, "upgrade", None)
        if upgrade is not None:      # (run at once if done: so outside the lock)
            upgrade.add_done_callback(functools.partial(_upgraded, weakref.ref(self), kind))

    def _use(self, kind, address):
        """Call the entry at ``address`` for ``kind`` from now on (with the lock held)."""
        if kind.startswith("batch:"):
            self._entries[kind] = (jit.BATCH(address), self._specs[kind[6:]])
            return
        spec = self._specs[kind]
        self._entries[kind] = (jit.ENTRY(address), spec)
        self._fast[kind] = self._fast_entry(kind, address, spec)
        if kind == "vjp" and self._fast["vjp"] is not None:
            self.vjp = self._specialised_vjp()

    def _adopt(self, kind, loaded):
        """Tier 2 is ready: calls from now on run it.  The first tier's code stays loaded
        as long as this function (a call on another thread may be running it)."""
        artifact = self._artifacts[kind]
        with self._lock:
            for e in artifact.entries:
                e.address = loaded.addresses[e.name]
            artifact.engine = loaded.engine
            self._engines.append(loaded.engine)
            self._use(kind, artifact.address)
            told = list(self._told) if kind == "forward" else []
        for ref in told:            # direct() callers: their call is out of date
            tell = ref()
            if tell is not None:
                tell()

    def artifact(self, kind):
        self._load(kind)
        return self._artifacts[kind]

    def wait_optimized(self, timeout=None) -> bool:
        """Wait for the optimised (second-tier) code of the entries loaded so far, where
        there is one (large straight-line programs compile quickly first and are
        optimised in the background); True when no entry is still waiting."""
        pending = [a.upgrade for a in list(self._artifacts.values())
                   if getattr(a, "upgrade", None) is not None]
        return not concurrent.futures.wait(pending, timeout).not_done

    def _specialised_vjp(self):
        """``vjp`` written out for this function's outputs: the Python around the native
        fast call is a few lines with no loops (generated as namedtuple generates code)."""
        function, specs, where = self._fast["vjp"]

        def read(i, seen):
            tag, k = where[i]
            text = f"o{k}" if tag == "a" else f"r[{k}]"
            if tag == "a" and i in seen:      # one node asked for twice: its own copy
                text += ".copy()"
            seen.add(i)
            return text

        def run(ids):   # scalars at consecutive places: one slice of the result tuple
            places = [where[i] for i in ids]
            if len(ids) > 1 and all(tag == "s" for tag, _ in places) and \
                    [k for _, k in places] == list(range(places[0][1], places[0][1] + len(ids))):
                return f"r[{places[0][1]}:{places[0][1] + len(ids)}]"
            return None
        seen = set()
        values = [read(i, seen) for i in self._out_ids]
        value = values[0] if len(values) == 1 else run(self._out_ids) or \
            "(" + ", ".join(values) + ",)"
        # (90 scalar gradients as r[1], r[2], … cost ~1 us a call; a slice ~0.1 us)
        grads = run(self._grad_ids) or \
            "(" + "".join(read(i, seen) + ", " for i in self._grad_ids) + ")"
        allocs = "".join(f"    o{k} = empty(specs[{k}][0], specs[{k}][1])\n"
                         for k in range(len(specs)))
        outs = "".join(f", o{k}" for k in range(len(specs)))
        one = len(self.seeds) == 1
        source = (
            "def vjp(*args, seed=None, **kwargs):\n"
            f"    if not kwargs and len(args) == {len(self.inputs)}:\n"
            f"        seeds = {'default' if one else 'None'} if seed is None else "
            f"{'(seed,)' if one else 'tuple(seed)'}\n"
            f"        if seeds is not None and len(seeds) == {len(self.seeds)}:\n"
            f"{allocs.replace('    o', '            o')}"
            f"            r = function(*args, *seeds, *constants{outs})\n"
            f"            if r is not FALLBACK:\n"
            f"                return {value}, {grads}\n"
            "    return slow(*args, seed=seed, **kwargs)\n")
        namespace = {"function": function, "specs": specs, "empty": np.empty,
                     "constants": self._specs["vjp"].constants,
                     "FALLBACK": fastcall.FALLBACK, "default": self._default_seed,
                     "slow": self._vjp}
        exec(compile(source, f"<symgrad vjp of {self.outputs[0][0]}>", "exec"), namespace)
        fn = namespace["vjp"]
        fn.__doc__ = NativeFunction.vjp.__doc__
        return fn

    def _fast_entry(self, kind, address, spec: EntrySpec):
        """(builtin, array output specs, where each requested result is) or None."""
        if kind not in ("forward", "vjp", "jvp") or \
                any(np.dtype(d).kind != "f" for _, _, d in self.inputs) or \
                any(c.ndim == 0 for c in spec.constants):
            return None          # index inputs are range-checked on the careful path
        params = [(s, d) for _, s, d in self.inputs]
        if kind == "vjp":
            params += [(s, d) for _, s, d in self.seeds]
        if kind == "jvp":
            params += [(s, d) for _, s, d in self.wrt]
        params += [(c.shape, c.dtype) for c in spec.constants]
        outputs = list(spec.result_types)
        try:
            made = fastcall.make(address, params, outputs)
        except MemoryError:
            raise
        except Exception:    # no fast path is a slower call, never a wrong one
            made = None
        if made is None:
            return None
        function, engine = made
        self._engines.append(engine)     # the glue's code lives as long as this function
        arrays = [k for k, (shape, _) in enumerate(outputs) if shape != ()]
        scalars = [k for k, (shape, _) in enumerate(outputs) if shape == ()]
        where = {}
        for i, k in zip(spec.results, range(len(outputs))):
            where[i] = ("a", arrays.index(k)) if k in arrays else ("s", scalars.index(k))
        specs = [outputs[k] for k in arrays]
        return function, specs, where

    # ---- what was generated --------------------------------------------------------
    @property
    def kinds(self) -> list:
        """The entry points: "forward", and "vjp" when compiled with wrt."""
        return list(self._specs)

    def __repr__(self):
        ins = ", ".join(f"{n}{list(s) if s else ''}" for n, s, _ in self.inputs)
        return (f"<{type(self).__name__} ({ins}) -> {len(self.outputs)} output(s), "
                f"wrt {len(self.wrt)}>")

    # ---- calling ---------------------------------------------------------------------
    def _bind(self, args, kwargs) -> list:
        return [self._coerce_input(k, v) for k, v in enumerate(self._given(args, kwargs))]

    def _given(self, args, kwargs) -> list:
        """The arguments as one value per input, in order (by position or by name)."""
        if len(args) > len(self.inputs):
            raise TypeError(f"takes {len(self.inputs)} inputs "
                            f"({', '.join(n for n, _, _ in self.inputs)}), got {len(args)}")
        values = list(args) + [_MISSING] * (len(self.inputs) - len(args))
        for key, v in kwargs.items():
            if key not in self._names:
                raise TypeError(f"unknown input {key!r}; inputs are "
                                f"{', '.join(n for n, _, _ in self.inputs)}")
            if values[self._names[key]] is not _MISSING:
                raise TypeError(f"input {key!r} given twice (by position and by name)")
            values[self._names[key]] = v
        missing = [n for (n, _, _), v in zip(self.inputs, values) if v is _MISSING]
        if missing:
            raise TypeError(f"missing input(s): {', '.join(missing)}")
        return values

    def _coerce_input(self, k, value, lead=()) -> np.ndarray:
        """Input ``k`` checked and converted; ``lead``: axes in front of its shape (a batch)."""
        name, shape, dtype = self.inputs[k]
        shape = tuple(lead) + tuple(shape)
        kind = np.dtype(dtype).kind
        return _coerce_index(value, name, shape, self.signature.bounds.get(name)) \
            if kind == "i" else _coerce_mask(value, name, shape) if kind == "b" else \
            _coerce(value, name, shape, dtype)

    def _run(self, kind, arrays) -> dict:
        fn, spec = self._entries[kind]
        results = {}
        arrays = list(arrays) + list(spec.constants)
        table = (ctypes.c_void_p * (len(arrays) + len(spec.results)))()
        for k, a in enumerate(arrays):
            table[k] = a.ctypes.data
        for k, (i, (shape, dtype)) in enumerate(zip(spec.results, spec.result_types)):
            out = results[i] = np.empty(shape, dtype)
            table[len(arrays) + k] = out.ctypes.data
        if fn(table) != 0:
            raise MemoryError("the compiled function could not allocate its workspace")
        return results

    def _run_batch(self, kind, arrays, steps, count) -> dict:
        """Entry ``kind`` over a batch of ``count`` elements in one native call: argument k
        advances ``steps[k]`` bytes per element, every result is ``(count,) + shape``."""
        key = "batch:" + kind
        self._load(key)
        fn, spec = self._entries[key]
        arrays = list(arrays) + list(spec.constants)
        steps = list(steps) + [0] * len(spec.constants)
        results = {}
        for i, (shape, dtype) in zip(spec.results, spec.result_types):
            results[i] = np.empty((count,) + tuple(shape), dtype)
        outs = [results[i] for i in spec.results]
        if count == 0:
            return results
        table = (ctypes.c_void_p * (len(arrays) + len(outs)))(
            *[a.ctypes.data for a in arrays + outs])
        step_table = (ctypes.c_int64 * len(table))(
            *steps, *[o.itemsize * (o.size // count) for o in outs])
        if fn(table, count, step_table) != 0:
            raise MemoryError("the compiled function could not allocate its workspace")
        return results

    # results keyed as dicts the user gave (compiler.function.Structured); here, as they are
    def _shaped(self, kind: str, result):
        """``result`` of ``kind`` ("outputs", "wrt", "jacobian", "hessian") as returned."""
        return result

    def _flat(self, kind: str, given):
        """Seeds ("outputs") or tangents ("wrt") as the entries take them."""
        return given

    def _keyed_hint(self, kind: str) -> str:
        """The end of an error about seeds ("outputs") or tangents ("wrt")."""
        return ""

    @staticmethod
    def _unwrap(values):
        values = [v.item() if isinstance(v, np.ndarray) and v.ndim == 0 else v for v in values]
        return values[0] if len(values) == 1 else tuple(values)

    def _try_fast(self, kind, args):
        """The native fast path: results by node id, or None to take the careful path."""
        fast = self._fast.get(kind)
        if fast is None:
            return None
        function, specs, where = fast
        outs = [np.empty(shape, dtype) for shape, dtype in specs]
        scalars = function(*args, *self._specs[kind].constants, *outs)
        if scalars is fastcall.FALLBACK:
            return None
        return {i: (outs[k] if tag == "a" else scalars[k]) for i, (tag, k) in where.items()}

    def direct(self, on_upgrade=None):
        """``(call, array_outputs, placement)`` for callers that keep their own output
        arrays (a caller calling the same function many times): ``call(*inputs, *outs)`` runs the
        forward entry on the native fast path writing ``outs`` — fresh or reused arrays,
        one per ``array_outputs`` entry ``(shape, dtype)`` — and returns the scalar outputs
        as a tuple, or ``fastcall.FALLBACK`` (then call the function itself).
        ``placement[k]`` is ``("a", j)`` or ``("s", j)``: output ``k`` is array ``j`` or
        scalar ``j``.  None when this function has no fast path.  ``on_upgrade``, a
        bound method (held weakly), is called when the optimised second tier replaces
        the code (from another thread): ``direct()`` then gives the new ``call``."""
        if on_upgrade is not None:
            with self._lock:
                self._told.append(weakref.WeakMethod(on_upgrade))
        if "forward" not in self._entries:
            self._load("forward")
        fast = self._fast.get("forward")
        if fast is None:
            return None
        function, specs, where = fast
        constants = tuple(self._specs["forward"].constants)
        call = function if not constants else \
            (lambda *args: function(*args[:len(self.inputs)], *constants,
                                    *args[len(self.inputs):]))
        return call, list(specs), [where[i] for i in self._out_ids]

    def __call__(self, *args, **kwargs):
        if "forward" not in self._entries:
            work = getattr(self._artifacts.get("vjp"), "work", None)
            if not self._called and work is not None and work <= FIRST_CALL_WORK:
                self._called = True
                return self._value_by_vjp(args, kwargs)
            self._load("forward")
        results = None if kwargs else self._try_fast("forward", args)
        if results is None:
            results = self._run("forward", self._bind(args, kwargs))
        return self._unwrap([results[i] for i in self._out_ids])

    def _value_by_vjp(self, args, kwargs):
        """The first call of a function compiled with its reverse pass, where a call is
        light (``FIRST_CALL_WORK``): the outputs from the VJP entry loaded at compile time
        (the same bits: every entry computes the outputs alike; the same checks of the
        arguments), instead of compiling the forward entry for it (W9's rocket: 4 ms of a
        23 ms compile and first call).  As a tiered JIT does, the next call compiles the
        forward entry, which skips the reverse pass."""
        zeros = [np.zeros(shape, dtype) for _, shape, dtype in self.seeds]
        return self._vjp(*args, seed=zeros[0] if len(zeros) == 1 else tuple(zeros),
                         **kwargs)[0]

    def vjp(self, *args, seed=None, **kwargs):
        """Outputs and ``vᵀJ`` for every ``wrt`` node, with ``seed`` = v (one per output)."""
        return self._vjp(*args, seed=seed, **kwargs)

    def _vjp(self, *args, seed=None, **kwargs):
        """The careful path: converts and checks every argument, explains what is wrong."""
        if "vjp" not in self._entries:
            if self.wrt:
                raise TypeError("this function was compiled with mode='jvp' (forward mode "
                                "only): use jvp(), or compile without mode= for vjp()")
            raise TypeError("this function was compiled without wrt=[...]: nothing to "
                            "differentiate; pass wrt to Graph.compile")
        arrays = self._bind(args, kwargs)
        seeds = self._seed_arrays(seed)
        results = self._run("vjp", arrays + seeds)
        values = self._unwrap([results[i] for i in self._out_ids])
        return values, self._grads([results[i] for i in self._grad_ids])

    @staticmethod
    def _grads(grads):
        grads = [g.item() if isinstance(g, np.ndarray) and g.ndim == 0 else g for g in grads]
        # a node asked for twice shares one buffer: give each caller its own array
        return tuple(g.copy() if isinstance(g, np.ndarray) and
                     any(g is h for h in grads[:k]) else g for k, g in enumerate(grads))

    # ---- forward mode, Jacobians and Hessians ------------------------------------------
    def _forward_mode(self, kind):
        """Build (once) and load the forward-mode entry ``kind`` ("jvp" or "hvp")."""
        if kind in self._entries and self._tangent_ids:    # loaded: no lock per call
            return
        with self._tangent_lock, jit.collector_paused():    # (building graph nodes)
            if not self._tangent_ids:
                if not self.wrt:
                    raise TypeError("this function was compiled without wrt=[...]: no "
                                    "tangents to push; pass wrt to Graph.compile")
                self._tangent_ids = self.source.add_tangents()
                self._specs.update(self.source.entry_specs())
        if kind not in self._specs and not self.seeds:
            raise TypeError("hvp() and hessian() differentiate the reverse pass, and this "
                            "function was compiled with mode='jvp' (no reverse pass); "
                            "compile without mode= for them")
        if kind not in self._specs:
            raise TypeError("hvp() and hessian() take a function with one scalar "
                            f"output; this one has outputs {[n for n, _, _ in self.outputs]}")
        self._load(kind)

    def jvp(self, *args, tangent=None, **kwargs):
        """Outputs and ``J·u`` (forward mode: one sweep), ``tangent`` = u: one array per
        ``wrt`` node, of its shape (a list of them for several)."""
        self._forward_mode("jvp")
        results = None
        if not kwargs and len(args) == len(self.inputs) and tangent is not None:
            tangents = self._one_each(tangent, self.wrt)
            if len(tangents) == len(self.wrt):
                results = self._try_fast("jvp", (*args, *tangents))
        if results is None:
            results = self._run("jvp", self._bind(args, kwargs) + self._tangent_arrays(tangent))
        values = self._unwrap([results[i] for i in self._out_ids])
        return values, self._unwrap(list(self._grads([results[i] for i in
                                                      self._tangent_ids["jvp"]])))

    def hvp(self, *args, tangent=None, **kwargs):
        """Gradients and Hessian–vector products ``H·u`` of a scalar output (forward mode
        over the reverse pass), one per ``wrt`` node."""
        self._forward_mode("hvp")
        arrays = self._bind(args, kwargs) + self._seed_arrays(None)
        results = self._run("hvp", arrays + self._tangent_arrays(tangent))
        return (self._grads([results[i] for i in self._grad_ids]),
                self._grads([results[i] for i in self._tangent_ids["hvp"]]))

    def _tangents_given(self, tangent, count=None) -> list:
        """One tangent per wrt node."""
        tangent = None if tangent is None else self._one_each(tangent, self.wrt, count)
        if tangent is None or len(tangent) != len(self.wrt):
            raise ArgumentError(f"pass tangent= one array per wrt node "
                                f"({', '.join(n for n, _, _ in self.wrt)}), of its shape"
                                + self._keyed_hint("wrt"))
        return tangent

    def _tangent_arrays(self, tangent):
        return [_coerce(u, f"tangent for {name}", shape, dtype)
                for u, (name, shape, dtype) in zip(self._tangents_given(tangent), self.wrt)]

    def _basis(self, slots, k):
        """Unit vectors: element ``k`` of the flattened ``slots`` set to 1, the rest 0."""
        arrays = [np.zeros(shape, dtype) for _, shape, dtype in slots]
        for a in arrays:
            if k < a.size:
                a.reshape(-1)[k] = 1
                break
            k -= a.size
        return arrays

    def jacobian(self, *args, **kwargs):
        """Dense Jacobians ∂output/∂wrt, of shape ``output.shape + wrt.shape``: a tuple over
        ``wrt`` for one output, a tuple over outputs of those for several (as jax.jacrev
        with tuple argnums).  Forward mode (a column per sweep) when the wrt nodes have
        fewer elements than the outputs, reverse mode (a row per sweep) otherwise; but the
        first Jacobian, while forward mode is not compiled yet, takes it only where it
        halves the sweeps (see ``_forward_pays``)."""
        if not self.wrt:
            raise TypeError("jacobian() needs wrt=[...] at compile time")
        m, n = self._elements(self.outputs), self._elements(self.wrt)
        _check_dense(m, n, "jacobian")
        first, self._jacobians = self._jacobians == 0, self._jacobians + 1
        arrays = self._bind(args, kwargs)
        if self._forward_pays(n, m, first):     # a column J·e_k per sweep
            self._forward_mode("jvp")
            cols = self._sweeps("jvp", arrays, self.wrt, self._tangent_ids["jvp"])
            blocks = self._dense(cols, self.outputs, self.wrt)
        else:         # a row e_kᵀJ per sweep: the blocks of Jᵀ, each transposed back
            rows = self._sweeps("vjp", arrays, self.seeds, self._grad_ids)
            transposed = self._dense(rows, self.wrt, self.outputs)
            blocks = [[_swap(transposed[j][i], len(w)) for j, (_, w, _) in enumerate(self.wrt)]
                      for i in range(len(self.outputs))]
        blocks = [tuple(b) for b in blocks]
        return blocks[0] if len(self.outputs) == 1 else tuple(blocks)

    def _forward_pays(self, columns: int, rows: int, first: bool) -> bool:
        """Whether a dense Jacobian takes forward mode (``columns`` sweeps) rather than
        reverse (``rows``).  Fewer sweeps decide, except that a forward-mode entry not yet
        compiled costs a compile about the size of the reverse pass's (W9's Van der Pol:
        19 ms for 20 columns, where its 21 rows cost 0.2 ms on the reverse entry loaded
        at compile time): the ``first`` Jacobian takes it only for half the sweeps or
        fewer; a Jacobian asked for again, as a solver asks each iteration, for fewer."""
        if "vjp" not in self._specs:
            return True
        if "jvp" in self._entries or not first:
            return columns < rows
        return 2 * columns <= rows

    def hessian(self, *args, **kwargs):
        """The dense Hessian of a scalar output: ``H[i][j] = ∂²f/∂w_i∂w_j`` of shape
        ``w_i.shape + w_j.shape`` (one array for one wrt node), one H·e per sweep."""
        n = self._elements(self.wrt)
        _check_dense(n, n, "hessian")
        self._forward_mode("hvp")
        arrays = self._bind(args, kwargs) + self._seed_arrays(None)
        cols = self._sweeps("hvp", arrays, self.wrt, self._tangent_ids["hvp"])
        blocks = self._dense(cols, self.wrt, self.wrt)
        return blocks[0][0] if len(self.wrt) == 1 else tuple(tuple(b) for b in blocks)

    def _sweeps(self, kind, arrays, slots, ids) -> list:
        """Entry ``kind`` once per unit vector e_k over the elements of ``slots`` (tangents
        or seeds), after ``arrays`` (bound once): the results at ``ids`` of each sweep.
        (Through ``jvp``/``vjp`` each sweep bound and checked the arguments again: half
        the time of a 1,000-sweep Hessian.)  Asked again, many sweeps run in batches."""
        n = self._elements(slots)
        again = kind in self._swept
        self._swept.add(kind)
        if again and n >= BATCHED_SWEEPS:
            return self._batched_sweeps(kind, arrays, slots, ids, n)
        sweeps = []
        for k in range(n):
            results = self._run(kind, arrays + self._basis(slots, k))
            sweeps.append([results[i] for i in ids])
        return sweeps

    def _batched_sweeps(self, kind, arrays, slots, ids, n) -> list:
        """``_sweeps`` through the batch form of entry ``kind``: the unit vectors of a
        chunk are the batch, ``arrays`` shared by all of it.  The same bits: each element
        runs the same program."""
        sweeps, shared = [], [0] * len(arrays)
        for start in range(0, n, SWEEP_CHUNK):
            count = min(SWEEP_CHUNK, n - start)
            unit = np.zeros((count, n))
            unit[np.arange(count), start + np.arange(count)] = 1.0
            parts = [np.ascontiguousarray(p.reshape((count,) + tuple(shape)), dtype)
                     for p, (_, shape, dtype) in zip(np.split(unit, self._offsets(slots), axis=1),
                                                     slots)]
            results = self._run_batch(kind, arrays + parts,
                                      shared + [p.itemsize * (p.size // count) for p in parts],
                                      count)
            sweeps += [[results[i][j] for i in ids] for j in range(count)]
        return sweeps

    # ---- compressed sweeps (the sparse Jacobians of CompiledFunction) --------------------
    def _compressed(self, kind, arrays, pattern) -> np.ndarray:
        """The values at ``pattern`` = (rows, columns, (m, n), (direction, colour)) of the
        stacked Jacobian ("jacobian") or Hessian, one sweep per colour: the columns (rows)
        of one colour share no row (column), so each nonzero is read off the one sweep of
        its column's (row's) colour."""
        rows, cols, (m, n), (direction, colour) = pattern
        count = int(colour.max()) + 1 if colour.size else 0
        if direction == "forward":
            entry = "jvp" if kind == "jacobian" else "hvp"
            self._forward_mode(entry)
            lead = arrays if kind == "jacobian" else arrays + self._seed_arrays(None)
            swept = np.zeros((m, count))
            for c in range(count):
                u = self._split((colour == c).astype(np.float64), self.wrt)
                results = self._run(entry, lead + u)
                swept[:, c] = _stacked([results[i] for i in self._tangent_ids[entry]], m)
            return swept[rows, colour[cols]]
        swept = np.zeros((count, n))
        for c in range(count):
            v = self._split((colour == c).astype(np.float64), self.seeds)
            results = self._run("vjp", arrays + v)
            swept[c] = _stacked([results[i] for i in self._grad_ids], n)
        return swept[colour[rows], cols]

    def _split(self, flat, slots) -> list:
        """A flat vector as one array per slot (its shape and dtype)."""
        return [np.ascontiguousarray(part.reshape(shape), dtype) for part, (_, shape, dtype)
                in zip(np.split(flat, self._offsets(slots)), slots)]

    def _dense(self, sweeps, results, swept) -> list:
        """Blocks ``[r][s]`` of the matrix whose column k is ``sweeps[k]`` (one array per
        ``results`` slot), k running over the elements of the ``swept`` slots: of shape
        ``results[r].shape + swept[s].shape``."""
        blocks = []
        for r, (_, shape, _) in enumerate(results):
            size = int(np.prod(shape))
            full = np.array([np.asarray(s[r]).reshape(-1) for s in sweeps]).reshape(
                len(sweeps), size).T
            blocks.append([np.ascontiguousarray(c).reshape(shape + cshape) for c, (_, cshape, _) in
                           zip(np.split(full, self._offsets(swept), axis=1), swept)])
        return blocks

    @staticmethod
    def _elements(slots) -> int:
        """The elements of ``slots`` (name, shape, dtype) in all."""
        return sum(int(np.prod(s)) for _, s, _ in slots)

    @staticmethod
    def _offsets(slots):
        return np.cumsum([int(np.prod(s)) for _, s, _ in slots])[:-1]

    @staticmethod
    def _one_each(value, slots, count=None) -> list:
        """``value`` as one entry per slot: for one slot, the value itself or a one-element
        list of it — a list is the latter exactly when its element has the slot's shape
        (or, for a batch of ``count``, that shape with a leading batch axis)."""
        if len(slots) == 1:
            shape = tuple(slots[0][1])
            listed = (isinstance(value, (list, tuple)) and len(value) == 1
                      and np.shape(value[0]) in (shape, (count,) + shape))
            return list(value) if listed else [value]
        return list(value)

    def _seeds_given(self, seed, count=None) -> list:
        """One seed per output, the default 1 filled in for scalar outputs."""
        if seed is None and len(self.seeds) > 1:
            seed = [None] * len(self.seeds)
        seed = self._one_each(seed, self.seeds, count)
        if len(seed) != len(self.seeds):
            raise ArgumentError(f"{len(self.seeds)} outputs need {len(self.seeds)} seeds, "
                                f"got {len(seed)}" + self._keyed_hint("outputs"))
        for k, (s, (_, shape, _), (oname, _, _)) in enumerate(
                zip(seed, self.seeds, self.outputs)):
            if s is None:
                if shape != ():
                    raise ArgumentError(
                        f"output {oname} has shape {shape}: pass seed= an array of that shape "
                        "(the v of vᵀJ); only a scalar output has the default seed 1")
                seed[k] = 1.0
        return seed

    def _seed_arrays(self, seed):
        return [_coerce(s, f"seed for {oname}", shape, dtype) for s, (_, shape, dtype),
                (oname, _, _) in zip(self._seeds_given(seed), self.seeds, self.outputs)]
