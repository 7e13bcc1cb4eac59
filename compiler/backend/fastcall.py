"""JIT'd CPython ``METH_FASTCALL`` functions: the cheap call path into compiled entries.

``fast(*inputs, *seeds, *array_outputs)`` checks every argument natively — an exact
``float`` or ``numpy.float64`` for a scalar, an exact ``ndarray`` with the declared dtype
(by descriptor identity), rank, dimensions and C-contiguous, aligned (and, for outputs, writeable)
flags for a tensor — fills the pointer table and calls the kernel entry.  It returns a
tuple of the scalar outputs as Python floats, or the FALLBACK sentinel when anything
does not match exactly; the caller then takes the careful Python path, which converts
what it can and raises a clear error for the rest.  So the native code never reads a
buffer it has not checked, and never raises.

The object layouts it reads (``PyFloatObject.ob_fval``; numpy's ``PyArrayObject``
fields) are verified against live objects at start-up; if they differ (another
interpreter, a free-threaded build), the fast path is simply not used.

The glue depends only on the call signature (shapes and dtypes of arguments and
outputs): one object per signature serves every entry with it.  Each compiled entry
gets its own builtin over that glue whose ``self`` is a capsule holding the entry's
address, so compiling a new graph with a known signature compiles no glue.
"""
from __future__ import annotations

import ctypes
import functools
import sys
import threading
import weakref

import numpy as np
from llvmlite import ir

from . import jit

FALLBACK = type("Fallback", (), {"__repr__": lambda self: "<fast path: fall back>"})()

# Offsets (bytes) in CPython and numpy objects; checked by _layout_ok().
OB_TYPE, FLOAT_VALUE = 8, 16
ARR_DATA, ARR_ND, ARR_DIMS, ARR_DESCR, ARR_FLAGS = 16, 24, 32, 56, 64
C_CONTIGUOUS, ALIGNED, WRITEABLE = 0x1, 0x100, 0x400
RELEASE_GIL_ABOVE = 16384     # elements touched; below this the GIL round trip costs more

I8, I32, I64, F64, F32, PTR = (ir.IntType(8), ir.IntType(32), ir.IntType(64),
                               ir.DoubleType(), ir.FloatType(), ir.PointerType())


DESCRIPTORS = {np.dtype(np.float64): "f64", np.dtype(np.float32): "f32",
               np.dtype(np.int64): "i64"}


def _read(address, ctype):
    return ctype.from_address(address).value


@functools.lru_cache(maxsize=None)
def layout_ok() -> bool:
    """Do the offsets above describe this interpreter's floats and numpy's arrays?"""
    if sys.implementation.name != "cpython" or getattr(sys, "_is_gil_enabled", lambda: True)() \
            is False:
        return False
    try:
        for x in (1.2345, np.float64(1.2345)):
            if _read(id(x) + OB_TYPE, ctypes.c_void_p) != id(type(x)) or \
                    _read(id(x) + FLOAT_VALUE, ctypes.c_double) != x:
                return False
        a = np.zeros((3, 5))
        base = id(a)
        dims = _read(base + ARR_DIMS, ctypes.c_void_p)
        return (_read(base + OB_TYPE, ctypes.c_void_p) == id(np.ndarray)
                and _read(base + ARR_DATA, ctypes.c_void_p) == a.ctypes.data
                and _read(base + ARR_ND, ctypes.c_int) == 2
                and (ctypes.c_int64 * 2).from_address(dims)[:] == [3, 5]
                and _read(base + ARR_DESCR, ctypes.c_void_p) == id(a.dtype)
                and a.dtype is np.dtype(np.float64)
                and _read(base + ARR_FLAGS, ctypes.c_int) & C_CONTIGUOUS)
    except Exception:   # any surprise: no fast path
        return False


class _Def(ctypes.Structure):
    _fields_ = [("ml_name", ctypes.c_char_p), ("ml_meth", ctypes.c_void_p),
                ("ml_flags", ctypes.c_int), ("ml_doc", ctypes.c_char_p)]


METH_FASTCALL = 0x80
_libc = ctypes.CDLL(None)
_libc.malloc.restype = ctypes.c_void_p
_libc.malloc.argtypes = [ctypes.c_size_t]


def _method_def(name: str, address: int):
    """A PyMethodDef in memory that is never freed: CPython reads a builtin's definition
    until the builtin is gone — even while freeing it, which at interpreter exit happens
    after module globals (so after any Python object could have kept it) are cleared."""
    raw = name.encode() + b"\0"
    text = _libc.malloc(len(raw))
    ctypes.memmove(text, raw, len(raw))
    definition = _Def.from_address(_libc.malloc(ctypes.sizeof(_Def)))
    definition.ml_name = ctypes.cast(text, ctypes.c_char_p)
    definition.ml_meth = address
    definition.ml_flags = METH_FASTCALL
    definition.ml_doc = None
    return definition
_new_function = ctypes.pythonapi.PyCFunction_NewEx
_new_function.restype = ctypes.py_object
_new_function.argtypes = [ctypes.POINTER(_Def), ctypes.py_object, ctypes.py_object]


def _api(name):
    return ctypes.cast(getattr(ctypes.pythonapi, name), ctypes.c_void_p).value


@functools.lru_cache(maxsize=None)
def _bind_symbols():
    import llvmlite.binding as llvm
    for what, obj in (("float", float), ("npf64", np.float64), ("ndarray", np.ndarray),
                      ("fallback", FALLBACK),
                      ("f64", np.dtype(np.float64)), ("f32", np.dtype(np.float32)),
                      ("i64", np.dtype(np.int64))):
        llvm.add_symbol(f"__symgrad_addr_{what}", id(obj))   # these objects live forever
    for api in ("Py_IncRef", "PyFloat_FromDouble", "PyTuple_New", "PyTuple_SetItem",
                "PyEval_SaveThread", "PyEval_RestoreThread", "PyCapsule_GetPointer"):
        llvm.add_symbol(api, _api(api))


def _symbol(module, name):
    """The address bound to ``__symgrad_addr_<name>`` (see make()): code that names
    process-specific objects by symbol is the same in every process, so it can be cached."""
    sym = f"__symgrad_addr_{name}"
    if sym in module.globals:
        return module.globals[sym]
    return ir.GlobalVariable(module, I8, name=sym)


def build(name: str, params: list, outputs: list):
    """The fast-call glue for a signature.  ``params``: (shape, dtype) of each argument in
    table order; ``outputs``: (shape, dtype) of each output.  Array outputs are extra
    trailing arguments; scalar outputs come back as a tuple of floats.  The entry to
    call is the pointer in the capsule the builtin is bound to (its ``self``)."""
    module = ir.Module(name=name)
    fn_type = ir.FunctionType(PTR, [PTR, PTR, I64])
    fn = ir.Function(module, fn_type, name=name)
    incref = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR]), name="Py_IncRef")
    box = ir.Function(module, ir.FunctionType(PTR, [F64]), name="PyFloat_FromDouble")
    new_tuple = ir.Function(module, ir.FunctionType(PTR, [I64]), name="PyTuple_New")
    set_item = ir.Function(module, ir.FunctionType(I32, [PTR, I64, PTR]), name="PyTuple_SetItem")
    unbox = ir.Function(module, ir.FunctionType(PTR, [PTR, PTR]), name="PyCapsule_GetPointer")

    b = ir.IRBuilder(fn.append_basic_block("entry"))
    entry_type = ir.FunctionType(I32, [PTR])
    entry_fn = b.inttoptr(b.ptrtoint(b.call(unbox, [fn.args[0], ir.Constant(PTR, None)]), I64),
                          entry_type.as_pointer(), name="entry")
    fail = fn.append_basic_block("fallback")
    array_outputs = [k for k, (shape, _) in enumerate(outputs) if shape != ()]
    n_args = len(params) + len(array_outputs)
    table = b.alloca(PTR, len(params) + len(outputs), name="table")
    scalars = b.alloca(F64, max(1, len(params) + len(outputs)), name="scalars")

    def check(cond):
        nxt = fn.append_basic_block("ok")
        b.cbranch(cond, nxt, fail)
        b.position_at_end(nxt)

    check(b.icmp_signed("==", fn.args[2], ir.Constant(I64, n_args)))

    def opaque(pointer):
        # llvmlite types an alloca's pointer; a float32 goes into a double-sized cell
        return b.inttoptr(b.ptrtoint(pointer, I64), PTR)

    def field(obj, offset, ty):
        return b.load(b.gep(obj, [ir.Constant(I64, offset)], source_etype=I8), typ=ty)

    def take(arg_index, slot, shape, dtype, writeable):
        obj = b.load(b.gep(fn.args[1], [ir.Constant(I64, arg_index)], source_etype=PTR),
                     typ=PTR)
        kind = field(obj, OB_TYPE, I64)
        where = b.gep(table, [ir.Constant(I64, slot)], source_etype=PTR)
        def address_of(what):
            return b.ptrtoint(_symbol(module, what), I64)

        if shape == ():   # an exact Python float or numpy float64 (same layout)
            is_float = b.icmp_unsigned("==", kind, address_of("float"))
            is_f64 = b.icmp_unsigned("==", kind, address_of("npf64"))
            check(b.or_(is_float, is_f64))
            value = field(obj, FLOAT_VALUE, F64)
            cell = opaque(b.gep(scalars, [ir.Constant(I64, slot)], source_etype=F64))
            if dtype == np.float32:
                b.store(b.fptrunc(value, F32), cell)
            else:
                b.store(value, cell)
            b.store(cell, where)
            return
        check(b.icmp_unsigned("==", kind, address_of("ndarray")))
        check(b.icmp_signed("==", field(obj, ARR_ND, I32), ir.Constant(I32, len(shape))))
        descr = address_of(DESCRIPTORS[dtype])
        check(b.icmp_unsigned("==", field(obj, ARR_DESCR, I64), descr))
        need = C_CONTIGUOUS | ALIGNED | (WRITEABLE if writeable else 0)
        flags = field(obj, ARR_FLAGS, I32)
        check(b.icmp_signed("==", b.and_(flags, ir.Constant(I32, need)), ir.Constant(I32, need)))
        dims = field(obj, ARR_DIMS, PTR)
        for d, n in enumerate(shape):
            got = b.load(b.gep(dims, [ir.Constant(I64, d)], source_etype=I64), typ=I64)
            check(b.icmp_signed("==", got, ir.Constant(I64, n)))
        b.store(field(obj, ARR_DATA, PTR), where)

    for k, (shape, dtype) in enumerate(params):
        take(k, k, shape, np.dtype(dtype), False)
    for j, k in enumerate(array_outputs):
        shape, dtype = outputs[k]
        take(len(params) + j, len(params) + k, shape, np.dtype(dtype), True)
    for k, (shape, dtype) in enumerate(outputs):   # scalar outputs live in `scalars`
        if shape == ():
            slot = len(params) + k
            cell = b.gep(scalars, [ir.Constant(I64, slot)], source_etype=F64)
            b.store(cell, b.gep(table, [ir.Constant(I64, slot)], source_etype=PTR))

    # big kernels run without the GIL, so other Python threads go on meanwhile
    work = sum(int(np.prod(shape)) for shape, _ in params + outputs)
    if work >= RELEASE_GIL_ABOVE:
        save = ir.Function(module, ir.FunctionType(PTR, []), name="PyEval_SaveThread")
        restore = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR]),
                              name="PyEval_RestoreThread")
        state = b.call(save, [])
        status = b.call(entry_fn, [table])
        b.call(restore, [state])
    else:
        status = b.call(entry_fn, [table])
    check(b.icmp_signed("==", status, ir.Constant(I32, 0)))
    scalar_outputs = [k for k, (shape, _) in enumerate(outputs) if shape == ()]
    result = b.call(new_tuple, [ir.Constant(I64, len(scalar_outputs))])
    check(b.icmp_unsigned("!=", result, ir.Constant(PTR, None)))
    for j, k in enumerate(scalar_outputs):
        cell = opaque(b.gep(scalars, [ir.Constant(I64, len(params) + k)], source_etype=F64))
        if np.dtype(outputs[k][1]) == np.float32:
            value = b.fpext(b.load(cell, typ=F32), F64)
        else:
            value = b.load(cell, typ=F64)
        b.call(set_item, [result, ir.Constant(I64, j), b.call(box, [value])])
    b.ret(result)

    b.position_at_end(fail)
    sentinel = _symbol(module, "fallback")
    b.call(incref, [sentinel])
    b.ret(sentinel)
    return str(module)


_glues: dict = {}      # signature -> (weak reference to its CodeEngine, PyMethodDef)
_glues_lock = threading.Lock()
_capsule = ctypes.pythonapi.PyCapsule_New
_capsule.restype = ctypes.py_object
_capsule.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]


def make(entry_address: int, params: list, outputs: list):
    """(the fast-call builtin for the entry at ``entry_address``, the engine holding its
    glue), or None where the object layouts are not known."""
    if not layout_ok():
        return None
    signature = (tuple((tuple(s), np.dtype(d).str) for s, d in params),
                 tuple((tuple(s), np.dtype(d).str) for s, d in outputs))
    with _glues_lock:
        engine, definition = _glue(signature)
    function = _new_function(ctypes.byref(definition), _capsule(entry_address, None, None), None)
    return function, engine


def _glue(signature):
    """(engine, PyMethodDef) of the glue for ``signature``, compiled or loaded if its
    engine is gone (call with _glues_lock held)."""
    ref, definition = _glues.get(signature, (lambda: None, None))
    engine = ref()
    if engine is not None:
        return engine, definition
    import hashlib
    for k in [k for k, (old, _) in _glues.items() if old() is None]:
        del _glues[k]        # their engines are closed
    params, outputs = ([(s, np.dtype(d)) for s, d in part] for part in signature)
    digest = hashlib.sha256(repr(signature).encode()).hexdigest()
    name = "symgrad_fast_" + digest[:16]
    _bind_symbols()
    # Keyed by the signature: the text is a function of it and of this module (whose
    # source is in every cache entry's build digest; the offsets it reads are checked by
    # layout_ok), so a process with the glue on disk does not write it (4 ms) to hash it.
    # Straight-line checks and one call: code generation alone gives the same instruction
    # count per call as the IR pipeline (callgrind), and skipping it saves a pipeline run.
    key = "fast-sig-" + digest
    loaded = jit.lookup(key, [name]) or \
        jit.load(build(name, params, outputs), [name], key, optimize_ir=False)
    # one definition per loaded glue, never freed (see _method_def)
    definition = _method_def("symgrad_fast", loaded.addresses[name])
    _glues[signature] = (weakref.ref(loaded.engine), definition)
    return loaded.engine, definition
