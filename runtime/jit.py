"""The LLVM JIT: parse, optimise and load modules; hand back native addresses.

Every module is optimised, compiled to an object file and the object loaded into a
CodeEngine (an MCJIT engine); compiled functions hold the engines their code lives in,
and an engine nobody holds is closed (see CodeEngine).  Going through objects is what
lets the disk cache (``cache.py``) hand back the same code in a new process.  Very large modules are
code-generated at level 0 (the fast register allocator) without the SLP vectoriser:
both grow super-linearly with long straight-line code.  One lock
around it: compiles from several threads are serialised, calls are not.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import re
import threading
import weakref
from dataclasses import dataclass

import llvmlite.binding as llvm

OPT_LEVEL = 3
# Above this many IR instructions, long straight-line code makes the SLP vectoriser and
# the greedy register allocator super-linear; compile such modules with less effort.
LARGE_MODULE = 20_000

_lock = threading.RLock()
_current = None          # the CodeEngine new objects go into
_codegen = {}            # "full" | "large" -> TargetMachine emitting objects
_target_machine = None


def _init():
    global _target_machine
    if _codegen:
        return
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    for lib in ("m", "mvec"):
        path = ctypes.util.find_library(lib)
        if path:
            try:
                llvm.load_library_permanently(path)
            except RuntimeError:
                pass
    target = llvm.Target.from_default_triple()
    cpu, features = llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten()
    _bind_private_names()
    for kind, opt in (("full", 3), ("large", 0)):
        _codegen[kind] = target.create_target_machine(cpu=cpu, features=features, opt=opt,
                                                      codemodel="jitdefault", jit=True)
    _target_machine = _codegen["full"]


# glibc's libmvec: ISA letter (x86 vector ABI), the host feature it needs, and widths
# for double and float.
_ISAS = (("e", "avx512f", 8, 16), ("d", "avx2", 4, 8), ("c", "avx", 4, 8), ("b", "sse2", 2, 4))
_MATH = {"sin": 1, "cos": 1, "tan": 1, "exp": 1, "log": 1, "tanh": 1, "pow": 2}


@functools.lru_cache(maxsize=None)
def _vector_variants() -> dict:
    """libm name -> [(vector name, width, arity)], best ISA per width, for this host."""
    path = ctypes.util.find_library("mvec")
    if not path:
        return {}
    try:
        lib = ctypes.CDLL(path)
    except OSError:
        return {}
    features = llvm.get_host_cpu_features()
    out = {}
    for name, arity in _MATH.items():
        for suffix, width_index in (("", 2), ("f", 3)):
            seen = set()
            for isa in _ISAS:
                width = isa[width_index]
                vname = f"_ZGV{isa[0]}N{width}{'v' * arity}_{name}{suffix}"
                if features.get(isa[1]) and width not in seen and hasattr(lib, vname):
                    seen.add(width)
                    out.setdefault(name + suffix, []).append((vname, width, arity))
    return out


_DECLARE = re.compile(r'declare (double|float) @"?(\w+)"?\(([^)]*)\)')


def _bind_private_names() -> None:
    """``__symgrad_sin`` → libm's ``sin``: a name LLVM does not know as a library function,
    so it keeps the call (and its SIMD variants) instead of turning it into ``llvm.sin``,
    whose vector form code generation splits back into scalar calls."""
    libm = ctypes.CDLL(ctypes.util.find_library("m"))
    for name in _vector_variants():
        llvm.add_symbol(f"__symgrad_{name}", ctypes.cast(getattr(libm, name), ctypes.c_void_p).value)


def add_vector_variants(ir_text: str) -> str:
    """Mark libm declarations as pure and give them their libmvec SIMD variants, so the
    loop vectoriser calls e.g. ``_ZGVeN8v_sin`` instead of eight scalar ``sin``."""
    variants = _vector_variants()
    if not variants:
        return ir_text
    extra, groups = [], 0
    for name in variants:
        ir_text = ir_text.replace(f'@"{name}"(', f'@"__symgrad_{name}"(')

    def mark(m):
        nonlocal groups
        ty, private = m.group(1), m.group(2)
        name = private.removeprefix("__symgrad_")
        if name == private or name not in variants:
            return m.group(0)
        groups += 1
        group = 9000 + groups
        listed = ",".join(f"_ZGV_LLVM_N{w}{'v' * a}_{private}({v})" for v, w, a in
                          variants.get(name, []))
        attr = f'"vector-function-abi-variant"="{listed}"' if listed else ""
        extra.append(f"attributes #{group} = {{ nounwind willreturn memory(none) {attr} }}")
        for v, w, a in variants.get(name, []):
            vt = f"<{w} x {ty}>"
            extra.append(f"declare {vt} @{v}({', '.join([vt] * a)})")
        return f"{m.group(0)} #{group}"
    text = _DECLARE.sub(mark, ir_text)
    used = [line.split("@")[1].split("(")[0] for line in extra if line.startswith("declare")]
    if used:  # keep the vector declarations alive until the loop vectoriser looks for them
        extra.append(f"@llvm.compiler.used = appending global [{len(used)} x ptr] "
                     f"[{', '.join('ptr @' + u for u in used)}], section \"llvm.metadata\"")
    return text + "\n" + "\n".join(extra) + "\n"


@functools.lru_cache(maxsize=None)
def blas() -> str | None:
    """Bind ``__symgrad_[sd]gemm`` to an ILP64 CBLAS gemm if one is at hand — the OpenBLAS
    that numpy's wheels ship — and say which; None means matmul stays plain loops."""
    import glob
    import os
    import numpy
    here = os.path.dirname(numpy.__file__)
    for path in sorted(glob.glob(os.path.join(here, os.pardir, "numpy.libs",
                                              "libscipy_openblas64_*.so*"))):
        try:
            lib = ctypes.CDLL(path)
            d, s = lib.scipy_cblas_dgemm64_, lib.scipy_cblas_sgemm64_
        except (OSError, AttributeError):
            continue
        llvm.add_symbol("__symgrad_dgemm", ctypes.cast(d, ctypes.c_void_p).value)
        llvm.add_symbol("__symgrad_sgemm", ctypes.cast(s, ctypes.c_void_p).value)
        return os.path.basename(path)
    return None


def target_machine():
    with _lock:
        _init()
        return _target_machine


@dataclass
class Loaded:
    """What the engine hands back for one module."""
    addresses: dict          # function name -> address
    engine: object = None    # the CodeEngine the code lives in: hold it to keep the code


OBJECTS_PER_ENGINE = 64


class CodeEngine:
    """An MCJIT engine; the code loaded into it lives exactly as long as this object.

    Compiled functions hold the engines their code is in; new objects go into the current
    engine until it holds OBJECTS_PER_ENGINE, then into a fresh one.  An engine nobody
    holds any more is closed, which returns its code memory and memory mappings: a process
    compiling many distinct graphs keeps only the code of the functions still alive."""

    def __init__(self):
        target = llvm.Target.from_default_triple()
        # MCJIT takes ownership of its target machine: each engine gets its own
        machine = target.create_target_machine(
            cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(),
            opt=3, codemodel="jitdefault", jit=True)
        self._engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), machine)
        self.objects = 0

    def add(self, obj: bytes, names) -> dict:
        self._engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
        self._engine.finalize_object()
        self.objects += 1
        return {n: self._engine.get_function_address(n) for n in names}

    def __del__(self):
        engine, self._engine = getattr(self, "_engine", None), None
        if engine is not None:
            try:
                with _lock:
                    engine.close()
            except Exception:   # interpreter shutdown: the process returns everything
                pass


# cache key -> (weak reference to its CodeEngine, addresses): code is never loaded twice
# while loaded, and forgotten when its engine closes
_loaded: dict = {}


def _known(key):
    hit = _loaded.get(key)
    if hit is not None:
        engine = hit[0]()
        if engine is not None:
            return Loaded(hit[1], engine=engine)
        del _loaded[key]
    return None


def optimize(module: "llvm.ModuleRef", size: int) -> None:
    pto = llvm.create_pipeline_tuning_options(speed_level=OPT_LEVEL if size < LARGE_MODULE else 1)
    pto.loop_vectorization = True
    pto.slp_vectorization = size < LARGE_MODULE
    pb = llvm.create_pass_builder(_target_machine, pto)
    pm = pb.getModulePassManager()    # one per run: a pass manager cannot run twice
    try:
        pm.run(module, pb)
    finally:
        _free_pass_manager(pm)


def _free_pass_manager(pm) -> None:
    """Free a module pass manager.  llvmlite (0.50 at least) never does: ``ObjectRef._dispose``
    (a no-op) comes before ``NewPassManager._dispose`` in ``ModulePassManager``'s method
    order, so each optimised module leaked its whole pipeline, ~50 KB."""
    from llvmlite.binding import ffi, newpassmanagers
    if type(pm)._dispose is ffi.ObjectRef._dispose:
        newpassmanagers.NewPassManager._dispose(pm)
        pm.detach()
    else:               # a fixed llvmlite
        pm.close()


def _cache_meta(names) -> dict:
    return {**_environment(), "names": sorted(names)}


@functools.lru_cache(maxsize=None)
def _environment() -> dict:
    """What the code in a cache entry depends on besides its key (read once: asking
    package metadata for a version costs milliseconds)."""
    import llvmlite
    from importlib.metadata import PackageNotFoundError, version
    try:
        mine = version("symgrad")
    except PackageNotFoundError:
        mine = "unknown"
    return {"symgrad": mine, "llvmlite": llvmlite.__version__, "blas": blas(),
            "llvm": list(llvm.llvm_version_info), "cpu": llvm.get_host_cpu_name(),
            "features": llvm.get_host_cpu_features().flatten()}


_MAPPINGS_EVERY = 128          # loads between two counts of the process's memory mappings
_loads_since_check = _MAPPINGS_EVERY


def _mapping_room() -> None:
    """Refuse to load more code when the process nears the kernel's limit on memory
    mappings: every loaded object takes a few until its engine closes, and LLVM aborts
    the process when it cannot map more.  A MemoryError is raised instead."""
    global _loads_since_check
    _loads_since_check += 1
    if _loads_since_check < _MAPPINGS_EVERY:
        return
    _loads_since_check = 0
    try:
        with open("/proc/sys/vm/max_map_count") as fh:
            limit = int(fh.read())
        with open("/proc/self/maps") as fh:
            used = sum(1 for _ in fh)
    except (OSError, ValueError):
        return
    if used > limit - 2000:
        _loads_since_check = _MAPPINGS_EVERY     # check again on every further load
        raise MemoryError(
            f"this process has {used} memory mappings of the kernel's limit of {limit} "
            "(vm.max_map_count), and loading more compiled code could abort the "
            "interpreter. The code of every live compiled function stays loaded: drop "
            "compiled functions you no longer need (the same graph compiles once), or "
            "raise vm.max_map_count")


def _add_object(obj: bytes, names, memory_key=None) -> Loaded:
    global _current
    _mapping_room()
    if _current is None or _current.objects >= OBJECTS_PER_ENGINE:
        _current = CodeEngine()
        for k in [k for k, (ref, _) in _loaded.items() if ref() is None]:
            del _loaded[k]
    engine = _current
    addresses = engine.add(obj, names)
    if memory_key is not None:
        _loaded[memory_key] = (weakref.ref(engine), addresses)
    return Loaded(addresses, engine=engine)


def lookup(key: str, names, memory_key: str | None = None) -> Loaded | None:
    """Code compiled before for ``key``: in this process, or from the disk cache.
    ``memory_key`` names it in this process's table when that differs from ``key``."""
    from . import cache
    with _lock:
        _init()
        known = _known(memory_key or key)
        if known is not None:
            return known
        obj = cache.load(key, _cache_meta(names))
        if obj is None:
            return None
        return _add_object(obj, names, memory_key or key)


def load(ir_text: str, names: list[str], key: str | None = None,
         memory_key: str | None = None, optimize_ir: bool = True) -> Loaded:
    """Parse, verify, optimise and compile ``ir_text`` to an object, load it and return the
    entry addresses; with a ``key``, the object is also written to the disk cache.
    ``optimize_ir=False`` skips the IR pipeline and uses the fast code generator (for
    straight-line glue, where neither gains anything)."""
    from . import cache
    with _lock:
        _init()
        if key is not None:
            known = _known(memory_key or key)
            if known is not None:
                return known
        module = _optimized_module(ir_text, optimize_ir)
        size = ir_text.count("\n")
        # huge modules, and glue that skipped the IR pipeline: the fast code generator
        quick = size >= LARGE_MODULE or not optimize_ir
        obj = _codegen["large" if quick else "full"].emit_object(module)
        loaded = _add_object(obj, names, (memory_key or key) if key is not None else None)
        if key is not None:
            cache.store(key, _cache_meta(names), obj)
        return loaded


def _optimized_module(ir_text: str, optimize_ir: bool = True):
    """Parsed, verified, targeted at this host and optimised (call with the lock held)."""
    _init()
    module = llvm.parse_assembly(add_vector_variants(ir_text))
    module.verify()
    module.triple = _target_machine.triple
    module.data_layout = str(_target_machine.target_data)
    if optimize_ir:
        optimize(module, ir_text.count("\n"))
    return module


def optimized(ir_text: str) -> str:
    """``ir_text`` after the optimisation pipeline (for reading; nothing is loaded)."""
    with _lock:
        return str(_optimized_module(ir_text))


def emit_assembly(ir_text: str) -> str:
    with _lock:
        return _target_machine.emit_assembly(_optimized_module(ir_text))


ENTRY = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p)


def emit_object(ir_text: str) -> bytes:
    """Position-independent native object code for ``ir_text`` (ahead-of-time export)."""
    with _lock:
        _init()
        target = llvm.Target.from_default_triple()
        tm = target.create_target_machine(cpu=llvm.get_host_cpu_name(),
                                          features=llvm.get_host_cpu_features().flatten(),
                                          opt=3, reloc="pic", codemodel="default")
        module = llvm.parse_assembly(ir_text)   # plain libm names: links against -lm
        module.verify()
        module.triple = tm.triple
        module.data_layout = str(tm.target_data)
        optimize(module, ir_text.count("\n"))
        return tm.emit_object(module)
