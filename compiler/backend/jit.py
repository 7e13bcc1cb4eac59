"""The LLVM JIT: parse, optimise and load modules; hand back native addresses.

Every module is optimised, compiled to an object file and the object loaded into a
CodeEngine (an MCJIT engine); compiled functions hold the engines their code lives in,
and an engine nobody holds is closed (see CodeEngine).  Going through objects is what
lets the disk cache (``cache.py``) hand back the same code in a new process.  Very large
modules are code-generated at level 0 (the fast register allocator) without the SLP
vectoriser: both grow super-linearly with long straight-line code.

All state (target machines, the current engine, the table of loaded code) belongs to one
:class:`JIT` object, made on first use by :func:`get`; the module functions below are
its public face.  One lock around it: compiles from several threads are serialised,
calls are not.  This module imports only llvmlite, numpy and the standard library.
"""
from __future__ import annotations

import concurrent.futures
import concurrent.futures.thread    # its exit hook before ours (see _Upgrades.submit)
import contextlib
import ctypes
import ctypes.util
import functools
import gc
import glob
import hashlib
import os
import re
import struct
import sys
import threading
import time
import weakref
import zlib
from dataclasses import dataclass

import llvmlite.binding as llvm

from . import cache
from .stats import stats

OPT_LEVEL = 3
# Above this many IR instructions, long straight-line code makes the SLP vectoriser and
# the greedy register allocator super-linear; compile such modules with less effort.
LARGE_MODULE = 20_000
# An engine stays open while any function in it lives, so one long-lived function keeps
# all its engine's code.  Small engines keep memory following the live functions: with 1
# compiled function in 100 kept alive, 8 objects per engine cost 0.16 memory mappings per
# compiled graph (64 cost 1.3, so the map-limit guard struck after ~49,000 compiles);
# keeping every function costs 64 KB each against 60 KB with 64.
OBJECTS_PER_ENGINE = 8
_MAPPINGS_EVERY = 128          # loads between two counts of the process's memory mappings
ENTRY = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p)
# a batched entry: (table, count, steps); ctypes releases the GIL for the call
BATCH = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p)


# ---- libm and its SIMD variants (glibc's libmvec) ------------------------------------------
# ISA letter (x86 vector ABI), the host feature it needs, and widths for double and float.
_ISAS = (("e", "avx512f", 8, 16), ("d", "avx2", 4, 8), ("c", "avx", 4, 8), ("b", "sse2", 2, 4))
_DECLARE = re.compile(r'declare (double|float) @"?(\w+)"?\(([^)]*)\)')


@functools.lru_cache(maxsize=None)
def _libmvec():
    path = ctypes.util.find_library("mvec")
    try:
        return ctypes.CDLL(path) if path else None
    except OSError:
        return None


@functools.lru_cache(maxsize=None)
def _libm():
    return ctypes.CDLL(ctypes.util.find_library("m"))


@functools.lru_cache(maxsize=None)
def vector_variants(name: str, arity: int, single: bool) -> tuple:
    """libm function ``name`` (``sin``; ``sinf`` with ``single``) → ((vector name, width),
    …), the best ISA per width this host has.  Any libm name works: the operator table
    decides what is called, this module only looks up what glibc offers for it."""
    lib = _libmvec()
    if lib is None:
        return ()
    features = llvm.get_host_cpu_features()
    width_index = 3 if single else 2
    out, seen = [], set()
    for isa in _ISAS:
        width = isa[width_index]
        vname = f"_ZGV{isa[0]}N{width}{'v' * arity}_{name}"
        if features.get(isa[1]) and width not in seen and hasattr(lib, vname):
            seen.add(width)
            out.append((vname, width))
    return tuple(out)


@functools.lru_cache(maxsize=None)
def vector_bits() -> int:
    """The host's widest vector: 512 bits with AVX-512, 256 with AVX, else 128."""
    features = llvm.get_host_cpu_features()
    return 512 if features.get("avx512f") else 256 if features.get("avx") else 128


def add_vector_variants(ir_text: str) -> str:
    """Mark libm declarations that have SIMD variants as pure and list the variants, so
    the loop vectoriser calls e.g. ``_ZGVeN8v_sin`` instead of eight scalar ``sin``.

    Such a function is called by a private name, ``__symgrad_sin``: a name LLVM does not
    know as a library function, so it keeps the call (and its SIMD variants) instead of
    turning it into ``llvm.sin``, whose vector form code generation splits back into
    scalar calls.  Every call of it, scalar or at any vector width, computes with one
    implementation (see ``_bind_shims``)."""
    found = {}
    for m in _DECLARE.finditer(ir_text):
        ty, name, params = m.groups()
        arity = len([p for p in params.split(",") if p.strip()])
        if vector_variants(name, arity, ty == "float"):
            found[name] = (ty, arity)
    if not found:
        return ir_text
    extra = []
    for k, (name, (ty, arity)) in enumerate(sorted(found.items())):
        private = f"__symgrad_{name}"
        variants = _bind_shims(name, arity, ty == "float")
        ir_text = ir_text.replace(f'@"{name}"(', f'@"{private}"(')
        listed = ",".join(f"_ZGV_LLVM_N{w}{'v' * arity}_{private}({v})" for v, w in variants)
        group = 9001 + k
        ir_text = re.sub(rf'(declare {ty} @"?{private}"?\([^)]*\))', rf"\1 #{group}", ir_text)
        # speculatable: any operand is safe, so a loop's masked-off lanes may call it
        extra.append(f'attributes #{group} = {{ nounwind willreturn memory(none) speculatable '
                     f'"vector-function-abi-variant"="{listed}" }}')
        for v, w in variants:
            vt = f"<{w} x {ty}>"
            extra.append(f"declare {vt} @{v}({', '.join([vt] * arity)})")
    used = [line.split("@")[1].split("(")[0] for line in extra if line.startswith("declare")]
    # keep the vector declarations alive until the loop vectoriser looks for them
    extra.append(f"@llvm.compiler.used = appending global [{len(used)} x ptr] "
                 f"[{', '.join('ptr @' + u for u in used)}], section \"llvm.metadata\"")
    return ir_text + "\n" + "\n".join(extra) + "\n"


@functools.lru_cache(maxsize=None)
def _bind_private(name: str) -> bool:
    """Bind ``__symgrad_<name>`` to libm's ``name``; False when libm has no such function."""
    function = getattr(_libm(), name, None)
    if function is None:
        return False
    llvm.add_symbol(f"__symgrad_{name}", ctypes.cast(function, ctypes.c_void_p).value)
    return True


_SHIM_ENGINES = []      # the engines holding the shims: they live as long as the process


@functools.lru_cache(maxsize=None)
def _bind_shims(name: str, arity: int, single: bool) -> tuple:
    """One implementation for every call of libm's ``name``: ((vector name, width), …) to
    list as its SIMD variants, with ``__symgrad_<name>`` bound to match.

    glibc's variants of one function at different widths (and its scalar function) are
    different implementations and disagree in the last bit on up to half of all inputs.
    Which width a call runs at is the vectoriser's choice, per loop: it differs between a
    function's forward and VJP entries, and between a loop's body and its remainder.  So
    the widest variant is the one implementation: narrower widths and the scalar call are
    small shims that widen their operands (repeating them), call it and keep their lanes.
    Each lane of a libmvec function depends only on that lane's operands."""
    variants = vector_variants(name, arity, single)
    wide_name, wide = variants[0]
    ty = "float" if single else "double"
    wt = f"<{wide} x {ty}>"
    args = ", ".join([wt] * arity)
    text = [f"declare {wt} @{wide_name}({args})"]

    def shim(shim_name, width):
        t = f"<{width} x {ty}>" if width else ty
        params = ", ".join(f"{t} %a{i}" for i in range(arity))
        text.append(f"define {t} @{shim_name}({params}) {{")
        for i in range(arity):
            if width:
                mask = ", ".join(f"i32 {j % width}" for j in range(wide))
                text.append(f"  %w{i} = shufflevector {t} %a{i}, {t} poison, "
                            f"<{wide} x i32> <{mask}>")
            else:
                text.append(f"  %s{i} = insertelement <1 x {ty}> poison, {ty} %a{i}, i32 0")
                text.append(f"  %w{i} = shufflevector <1 x {ty}> %s{i}, <1 x {ty}> poison, "
                            f"<{wide} x i32> zeroinitializer")
        operands = ", ".join(f"{wt} %w{i}" for i in range(arity))
        text.append(f"  %r = call {wt} @{wide_name}({operands})")
        if width:
            mask = ", ".join(f"i32 {j}" for j in range(width))
            text.append(f"  %n = shufflevector {wt} %r, {wt} poison, <{width} x i32> <{mask}>")
        else:
            text.append(f"  %n = extractelement {wt} %r, i32 0")
        text.append(f"  ret {t} %n\n}}")
        return shim_name

    listed = [(wide_name, wide)]
    names = [shim(f"__symgrad_{name}", 0)]
    for _, width in variants[1:]:
        names.append(shim(f"__symgrad_v{width}_{name}", width))
        listed.append((names[-1], width))
    module = llvm.parse_assembly("\n".join(text))
    module.verify()
    engine = llvm.create_mcjit_compiler(
        module, _host_machine(opt=2, codemodel="jitdefault", jit=True))
    engine.finalize_object()
    _SHIM_ENGINES.append(engine)
    for shim_name in names:
        llvm.add_symbol(shim_name, engine.get_function_address(shim_name))
    return tuple(listed)


def _bind_name(name: str) -> None:
    """Bind ``__symgrad_<name>`` as the code that referred to it was compiled against:
    a shim of a function with SIMD variants (``sin``, ``v4_sin``), else libm's function."""
    base = re.sub(r"^v\d+_", "", name)
    for arity in (1, 2):
        for single in (False, True):
            if vector_variants(base, arity, single):
                _bind_shims(base, arity, single)
                return
    _bind_private(name)


_PRIVATE = re.compile(rb"__symgrad_([A-Za-z_][A-Za-z0-9_]*)")


def bind_object_names(obj: bytes) -> None:
    """Bind the private libm names an object calls: an object from the disk cache comes
    without the IR that bound them when it was compiled."""
    for name in set(_PRIVATE.findall(obj)):
        if not name.startswith((b"addr_", b"dgemm", b"sgemm")):
            _bind_name(name.decode())


@functools.lru_cache(maxsize=None)
def blas() -> str | None:
    """Bind ``__symgrad_[sd]gemm`` to an ILP64 CBLAS gemm if one is at hand — the OpenBLAS
    that numpy's wheels ship — and say which; None means matmul stays plain loops."""
    import numpy
    here = os.path.dirname(numpy.__file__)
    for path in sorted(glob.glob(os.path.join(here, os.pardir, "numpy.libs",
                                              "libscipy_openblas64_*.so*"))):
        try:
            lib = ctypes.CDLL(path)
            lib.scipy_cblas_dgemm64_, lib.scipy_cblas_sgemm64_
        except (OSError, AttributeError):
            continue
        name = os.path.basename(path)
        better = _wider_kernels(path, lib)
        if better is not None:
            lib, name = better, f"{name} (SkylakeX kernels)"
        d, s = lib.scipy_cblas_dgemm64_, lib.scipy_cblas_sgemm64_
        llvm.add_symbol("__symgrad_dgemm", ctypes.cast(d, ctypes.c_void_p).value)
        llvm.add_symbol("__symgrad_sgemm", ctypes.cast(s, ctypes.c_void_p).value)
        return name
    return None


def _wider_kernels(path, lib):
    """A second instance of numpy's OpenBLAS using its AVX-512 kernels, or None.

    OpenBLAS picks its kernels once, at load, and maps some AVX-512 processors (AMD Zen 4)
    to its AVX2 "Haswell" kernels: there its single-core sgemm runs at about 0.55x the
    AVX-512 kernels' speed on the MLP's products (measured: 414 vs 242 us for
    256x784 @ 784x128).  numpy's instance cannot be changed after load, so symgrad loads a
    private copy of the same library file with ``OPENBLAS_CORETYPE=SkylakeX`` (its
    AVX-512 kernels) and the thread count numpy's instance has.  Only when the processor
    has the AVX-512 subsets those kernels use, and ``SYMGRAD_BLAS`` says so: ``auto`` (the
    default) when the user did not choose a core type with ``OPENBLAS_CORETYPE``,
    ``avx512`` whatever it says; ``numpy`` never."""
    import shutil
    import tempfile
    choice = os.environ.get("SYMGRAD_BLAS", "auto")
    if choice == "numpy" or (choice == "auto" and "OPENBLAS_CORETYPE" in os.environ):
        return None
    try:
        lib.scipy_openblas_get_corename64_.restype = ctypes.c_char_p
        core = lib.scipy_openblas_get_corename64_().decode()
        threads = lib.scipy_openblas_get_num_threads64_()
    except (AttributeError, UnicodeDecodeError):
        return None
    features = llvm.get_host_cpu_features()
    if core not in ("Haswell", "Zen") or not all(
            features.get(f) for f in ("avx512f", "avx512bw", "avx512dq", "avx512vl")):
        return None
    saved = {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_NUM_THREADS")}
    copy = None
    try:
        # dlopen shares one instance per file: a copy (unlinked once loaded) is a new one
        with tempfile.NamedTemporaryFile(prefix="symgrad-openblas-", suffix=".so",
                                         delete=False) as fh:
            copy = fh.name
            with open(path, "rb") as src:
                shutil.copyfileobj(src, fh)
        os.environ.update(OPENBLAS_CORETYPE="SkylakeX", OPENBLAS_NUM_THREADS=str(threads))
        wider = ctypes.CDLL(copy, mode=os.RTLD_LOCAL)
        wider.scipy_openblas_get_corename64_.restype = ctypes.c_char_p
        if wider.scipy_openblas_get_corename64_() != b"SkylakeX":
            return None
        wider.scipy_cblas_dgemm64_, wider.scipy_cblas_sgemm64_
        return wider
    except (OSError, AttributeError):
        return None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if copy is not None:
            try:
                os.unlink(copy)
            except OSError:
                pass


# ---- loaded code ---------------------------------------------------------------------------
@dataclass
class Loaded:
    """What the engine hands back for one module."""
    addresses: dict          # function name -> address
    engine: object = None    # the CodeEngine the code lives in: hold it to keep the code
    # straight-line code compiled quickly: starts optimising it in the background and
    # returns a Future of the optimised code (a Loaded, or None if that failed or was
    # cancelled), see ``JIT._upgrade``.  Started by the code's user once its own LLVM
    # work is done: llvmlite runs one call into LLVM at a time, and a call of the second
    # tier's (~0.1 s) made the fast-call glue of Lennard-Jones N=60 wait 0.2 s
    start_upgrade: object = None
    # the same code taken from memory while its second tier is under way: that Future
    upgrade: object = None


def _host_machine(**options):
    target = llvm.Target.from_default_triple()
    return target.create_target_machine(cpu=llvm.get_host_cpu_name(),
                                        features=llvm.get_host_cpu_features().flatten(),
                                        **options)


class CodeEngine:
    """An MCJIT engine; the code loaded into it lives exactly as long as this object.

    Compiled functions hold the engines their code is in; new objects go into the current
    engine until it holds OBJECTS_PER_ENGINE, then into a fresh one.  An engine nobody
    holds any more is closed, which returns its code memory and memory mappings: a process
    compiling many distinct graphs keeps only the code of the functions still alive."""

    def __init__(self, lock):
        # MCJIT takes ownership of its target machine: each engine gets its own
        machine = _host_machine(opt=3, codemodel="jitdefault", jit=True)
        self._engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), machine)
        self._lock = lock
        self.objects = 0

    def add(self, obj, names) -> dict:
        """Load ``obj`` (an object, a bundle of parts that call each other by name, or
        a list of such parts)."""
        parts = obj if isinstance(obj, list) else unbundle(obj)
        for part in parts:
            self._engine.add_object_file(llvm.ObjectFileRef.from_data(part))
        self._engine.finalize_object()
        self.objects += len(parts)
        return {n: self._engine.get_function_address(n) for n in names}

    def __del__(self):
        engine, self._engine = getattr(self, "_engine", None), None
        if engine is not None:
            try:
                with self._lock:
                    engine.close()
            except Exception:   # interpreter shutdown: the process returns everything
                pass


_BUNDLE = b"SGPARTS1"


def bundle(objects: list) -> bytes:
    """Objects compiled in parts, as one blob (one cache entry): a tag, the count and
    each length, then the objects."""
    head = _BUNDLE + struct.pack(f"<I{len(objects)}Q", len(objects), *map(len, objects))
    return b"".join([head, *objects])       # (one copy: a 100,000-node chain's are 8.5 MB)


def unbundle(blob: bytes) -> list:
    """The objects of ``bundle(...)`` (a plain object is a list of one)."""
    if not blob.startswith(_BUNDLE):
        return [blob]
    at = len(_BUNDLE)
    (count,) = struct.unpack_from("<I", blob, at)
    sizes = struct.unpack_from(f"<{count}Q", blob, at + 4)
    at += 4 + 8 * count
    out = []
    for size in sizes:
        out.append(blob[at:at + size])
        at += size
    if at != len(blob):
        raise ValueError("a damaged bundle of compiled parts")
    return out


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


def _source_digest() -> str:
    """A hash of the compiler's own source files (this package and its parent): a build
    with any change in how code is generated never serves another build's objects, even
    under the same version string."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    h = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                h.update(os.path.relpath(path, root).encode() + b"\0")
                with open(path, "rb") as fh:
                    h.update(fh.read())
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def environment() -> dict:
    """What the code in a cache entry depends on besides its key (read once: asking
    package metadata for a version costs milliseconds)."""
    import llvmlite
    from importlib.metadata import PackageNotFoundError, version
    try:
        mine = version("symgrad")
    except PackageNotFoundError:
        mine = "unknown"
    return {"symgrad": mine, "build": _source_digest(), "llvmlite": llvmlite.__version__,
            "blas": blas(), "llvm": list(llvm.llvm_version_info),
            "cpu": llvm.get_host_cpu_name(),
            "features": llvm.get_host_cpu_features().flatten()}


def _meta(names) -> dict:
    """What a cache entry's code depends on: this process's build, LLVM and CPU, and the
    entry points it holds."""
    return {**environment(), "names": sorted(names)}


def shipped(key: str, names) -> bytes | None:
    """The checked disk-cache entry of code this process loaded, to send with a pickled
    compiled function (None when the disk cache is off or no longer has it)."""
    meta = _meta(names)
    obj = cache.load(key, meta, peek=True)
    return None if obj is None else cache.pack(meta, obj)


class JIT:
    """LLVM initialised for this host, its target machines, and the code loaded so far."""

    def __init__(self):
        self.lock = threading.RLock()
        # compiles a caller is waiting for: the second tier waits while there are any,
        # and for QUIET seconds after the last
        self._foreground, self._quiet, self._last_wait = 0, threading.Condition(), 0.0
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        for lib in ("m", "mvec"):
            path = ctypes.util.find_library(lib)
            if path:
                try:
                    llvm.load_library_permanently(path)
                except RuntimeError:
                    pass
        self.machine = _host_machine(opt=3, codemodel="jitdefault", jit=True)
        # huge modules and glue: the fast code generator (see LARGE_MODULE)
        self.quick_machine = _host_machine(opt=0, codemodel="jitdefault", jit=True)
        self.current = None          # the CodeEngine new objects go into
        # cache key -> (weak reference to its CodeEngine, addresses): code is never loaded
        # twice while loaded, and forgotten when its engine closes
        self.loaded: dict = {}
        self.upgrading: dict = {}    # cache key -> the Future of its second tier, meanwhile
        self.loads_since_check = _MAPPINGS_EVERY

    # ---- optimising ---------------------------------------------------------------------
    def optimize(self, module, size: int) -> None:
        pto = llvm.create_pipeline_tuning_options(
            speed_level=OPT_LEVEL if size < LARGE_MODULE else 1)
        pto.loop_vectorization = True
        pto.slp_vectorization = size < LARGE_MODULE
        pb = llvm.create_pass_builder(self.machine, pto)
        pm = pb.getModulePassManager()    # one per run: a pass manager cannot run twice
        try:
            pm.run(module, pb)
        finally:
            _free_pass_manager(pm)

    def _instcombine(self, module) -> None:
        pm = llvm.create_new_module_pass_manager()
        pm.add_instruction_combine_pass()
        pb = llvm.create_pass_builder(self.machine, llvm.create_pipeline_tuning_options(1))
        try:
            pm.run(module, pb)
        finally:
            _free_pass_manager(pm)

    def _parsed(self, ir_text: str, context=None):
        """``ir_text`` parsed (in ``context``, default the global one), verified and
        targeted at this host."""
        module = llvm.parse_assembly(ir_text, context=context)
        module.verify()
        module.triple = self.machine.triple
        module.data_layout = str(self.machine.target_data)
        return module

    def module(self, ir_text: str, optimize_ir: bool = True):
        """Parsed, verified, targeted at this host and optimised (call with the lock held)."""
        module = self._parsed(add_vector_variants(ir_text))
        if optimize_ir:
            self.optimize(module, ir_text.count("\n"))
        return module

    # ---- loading --------------------------------------------------------------------------
    def _known(self, key):
        hit = self.loaded.get(key)
        if hit is not None:
            engine = hit[0]()
            if engine is not None:
                return Loaded(hit[1], engine=engine, upgrade=self.upgrading.get(key))
            del self.loaded[key]
        return None

    def _start_upgrade(self, memory_key, upgrade, *args, stored=0):
        """Start the second tier (``upgrade(*args)``) of the code loaded under
        ``memory_key``; later users of that code (``_known``) get its Future too, so they
        move to it as well.  ``stored``: the lines of IR it compiles for the disk cache
        (see ``_Upgrades.stop``)."""
        future = _upgrades.submit(upgrade, *args, stored=stored)
        if memory_key is None:
            return future
        with self.lock:
            self.upgrading[memory_key] = future

        def done(_):
            with self.lock:
                if self.upgrading.get(memory_key) is future:
                    del self.upgrading[memory_key]
        future.add_done_callback(done)
        return future

    def _mapping_room(self) -> None:
        """Refuse to load more code when the process nears the kernel's limit on memory
        mappings: every loaded object takes a few until its engine closes, and LLVM aborts
        the process when it cannot map more.  A MemoryError is raised instead."""
        self.loads_since_check += 1
        if self.loads_since_check < _MAPPINGS_EVERY:
            return
        self.loads_since_check = 0
        try:
            with open("/proc/sys/vm/max_map_count") as fh:
                limit = int(fh.read())
            with open("/proc/self/maps") as fh:
                used = sum(1 for _ in fh)
        except (OSError, ValueError):
            return
        if used > limit - 2000:
            self.loads_since_check = _MAPPINGS_EVERY     # check again on every further load
            raise MemoryError(
                f"this process has {used} memory mappings of the kernel's limit of {limit} "
                "(vm.max_map_count), and loading more compiled code could abort the "
                "interpreter. The code of every live compiled function stays loaded: drop "
                "compiled functions you no longer need (the same graph compiles once), or "
                "raise vm.max_map_count")

    def _add_object(self, obj: bytes, names, memory_key=None) -> Loaded:
        self._mapping_room()
        if self.current is None or self.current.objects >= OBJECTS_PER_ENGINE:
            self.current = CodeEngine(self.lock)
            for k in [k for k, (ref, _) in self.loaded.items() if ref() is None]:
                del self.loaded[k]
        engine = self.current
        addresses = engine.add(obj, names)
        if memory_key is not None:
            self.loaded[memory_key] = (weakref.ref(engine), addresses)
        return Loaded(addresses, engine=engine)

    def lookup(self, key: str, names, memory_key: str | None = None) -> Loaded | None:
        with self.lock:
            known = self._known(memory_key or key)
            if known is not None:
                return known
            obj = cache.load(key, _meta(names))
            if obj is None:
                return None
            bind_object_names(obj)
            return self._add_object(obj, names, memory_key or key)

    @contextlib.contextmanager
    def _waited_for(self):
        """A compile someone waits for.  llvmlite lets one thread into LLVM at a time, so
        the second tier (``_upgrade``) holds back meanwhile: compiling W9's rocket while
        the unrolled form's second tier ran took 0.32 s instead of 0.18."""
        with self._quiet:
            self._foreground += 1
        try:
            yield
        finally:
            with self._quiet:
                self._foreground -= 1
                self._last_wait = time.monotonic()
                self._quiet.notify_all()

    def _until_quiet(self) -> None:
        """Wait until no compile has been waited for these QUIET seconds: a user's compile,
        first call and Jacobian are several compiles in a row, with Python between them
        (checking for exit now and then)."""
        with self._quiet:
            while not _upgrades.cancelled and not _upgrades.exiting:
                idle = time.monotonic() - self._last_wait
                if not self._foreground and idle >= QUIET:
                    return
                self._quiet.wait(min(0.1, QUIET - idle) if not self._foreground else 0.1)

    def load(self, ir_text: str, names, key=None, memory_key=None, optimize_ir=True,
             tiered=False) -> Loaded:
        """Compile and load one module.  ``tiered``: a module of TIER_LINES lines or more
        with no fast-math flags is compiled quickly first and optimised in the background
        (``Loaded.start_upgrade``): W9's rocket compiles in 0.13 s instead of 0.32, and
        its calls take 205 µs instead of 168 until the optimised code is in."""
        with self._waited_for():
            return self._load(ir_text, names, key, memory_key, optimize_ir, tiered)

    def _load(self, ir_text: str, names, key, memory_key, optimize_ir, tiered) -> Loaded:
        lines = ir_text.count("\n")
        first = tiered and TIERED and optimize_ir and TIER_LINES <= lines < LARGE_MODULE \
            and _FAST_MATH.search(ir_text) is None and _upgrades.room()
        with self.lock:
            if key is not None:
                known = self._known(memory_key or key)
                if known is not None:
                    return known
            module = self.module(ir_text, optimize_ir and not first)
            quick = lines >= LARGE_MODULE or not optimize_ir or first
            obj = (self.quick_machine if quick else self.machine).emit_object(module)
            loaded = self._keep(obj, names, key, memory_key, store=not first)
        if first:
            loaded.start_upgrade = functools.partial(
                self._start_upgrade, memory_key or key, self._upgrade_module, ir_text, names,
                key, memory_key, stored=lines if key is not None else 0)
        return loaded

    def _keep(self, obj, names, key, memory_key, store=True) -> Loaded:
        """Load newly compiled code (an object or a list of parts) and, with a ``key``,
        store it in the disk cache — unless ``store`` is False: a first tier, whose second
        tier is stored instead (a quick compile on disk would be loaded, and kept, by
        every later process).  Parts are bundled only to be stored: the bundle is a copy
        of them all."""
        loaded = self._add_object(obj, names, (memory_key or key) if key is not None else None)
        if key is not None and store:
            cache.store(key, _meta(names), bundle(obj) if isinstance(obj, list) else obj)
        stats.modules_compiled += 1
        return loaded

    def load_parts(self, produce, names, key=None, memory_key=None, tiered=True,
                   pays=None) -> Loaded:
        """``produce(hand_over)`` lowers a program, handing each finished part's IR text
        to ``hand_over`` and returning the text with the entries.  Each part is compiled
        by a worker thread as it arrives, so LLVM works while Python lowers the next part
        (llvmlite lets go of the interpreter's lock inside LLVM).  Parts are large
        programs: they get the settings of a LARGE_MODULE, as the one module would.
        ``tiered``: it may take two tiers; ``pays``, asked once the program is produced:
        whether two tiers gain anything for a program of one module (its calls do little
        work, so quick code costs less than its compile saves)."""
        with self._waited_for():
            return self._load_parts(produce, names, key, memory_key, tiered, pays)

    def _load_parts(self, produce, names, key, memory_key, tiered, pays) -> Loaded:
        if key is not None:
            with self.lock:
                known = self._known(memory_key or key)
                if known is not None:
                    return known
        # each straight-line part's (lines, compressed text) for a second tier, else None
        parts, worker = [], None
        kept = tiered and TIERED and _upgrades.room()

        def hand_over(text, straight_line=False):
            nonlocal worker
            with self.lock:                       # binds the libm shims on first use
                text = add_vector_variants(text)
            if worker is None:
                worker = concurrent.futures.ThreadPoolExecutor(1, "symgrad-llvm")
            # a part the second tier compiles again skips instcombine now
            parts.append(worker.submit(self._first_tier_part, text, straight_line, kept))
            stats.parts_compiled += 1
            stats.parts_straight_line += straight_line
        try:
            with _short_switches():
                main = produce(hand_over)
        except BaseException:
            if worker is not None:      # parts not yet started are of no use now
                worker.shutdown(wait=True, cancel_futures=True)
            raise
        if worker is not None:
            worker.shutdown(wait=True)
        if not parts:
            return self.load(main, names, key, memory_key,
                             tiered=tiered and (pays is None or pays()))
        objects, texts = [], [] if kept else None
        for f in parts:
            obj, text = f.result()
            objects.append(obj)
            if kept:
                texts.append(text)
        upgrade = texts is not None and any(t is not None for t in texts)
        with self.lock:
            main = add_vector_variants(main)
            objects.append(self._compile_part(main))
            loaded = self._keep(objects, names, key, memory_key, store=not upgrade)
        if upgrade:     # (it compiles the straight-line parts again: their objects can go)
            objects = [o if t is None else None for o, t in zip(objects, texts + [None])]
            loaded.start_upgrade = functools.partial(
                self._start_upgrade, memory_key or key, self._upgrade, texts, objects, names,
                key, memory_key, stored=sum(lines for lines, _ in filter(None, texts))
                if key is not None else 0)
        return loaded

    def _upgrade(self, texts: list, first: list, names, key, memory_key) -> Loaded | None:
        """Tier 2 of a program's straight-line parts: compiled again with instcombine and
        the optimising code generator (register allocation and scheduling: Lennard-Jones
        N=30 evaluates in 6.4 us instead of 9.4); the other parts' (loops, already
        optimised) and the entries' objects are the first tier's.  Loaded into an engine
        of its own (the symbols are the first tier's), stored in the cache over the first
        tier's object and given to ``memory_key``'s later users.  Bit for bit the same
        results: the written code carries no fast-math flags, and both tiers call the
        same libm shims."""
        objects = []
        for text, obj in zip(texts, first):
            if text is not None:
                self._until_quiet()
            if _upgrades.cancelled:
                return None
            objects.append(obj if text is None else self._compile_part(
                zlib.decompress(text[1]).decode(), True, self.machine))
        objects.append(first[-1])
        if _upgrades.cancelled:         # exiting: nothing more goes in (or to disk)
            return None
        return self._installed(bundle(objects), names, key, memory_key)

    def _upgrade_module(self, ir_text: str, names, key, memory_key) -> Loaded | None:
        """Tier 2 of a module ``load`` compiled quickly: the same text optimised as it
        would have been (in an LLVM context of its own).  Bit for bit the same results:
        only modules without fast-math flags are tiered, so no optimisation may reorder
        or fuse floating-point arithmetic, sums are written in a fixed order, and every
        call of a libm function runs one implementation at any vector width."""
        self._until_quiet()
        if _upgrades.cancelled:
            return None
        with self.lock:                 # (the libm shims are bound under it)
            text = add_vector_variants(ir_text)
        obj = self._compile_part(text, machine=self.machine, size=ir_text.count("\n"))
        if _upgrades.cancelled:         # exiting: nothing more goes in (or to disk)
            return None
        return self._installed(obj, names, key, memory_key)

    def _installed(self, obj: bytes, names, key, memory_key) -> Loaded:
        """A second tier's object loaded into an engine of its own, stored in the disk
        cache (the first tier was not) and given to ``memory_key``'s later users."""
        with self.lock:
            self._mapping_room()    # (a MemoryError here leaves the first tier in use)
            engine = CodeEngine(self.lock)
            addresses = engine.add(obj, names)
            engine.objects = OBJECTS_PER_ENGINE      # nothing else goes in
            loaded = Loaded(addresses, engine=engine)
            if key is not None:
                self.loaded[memory_key or key] = (weakref.ref(engine), addresses)
                cache.store(key, _meta(names), obj)
        stats.upgrades += 1
        return loaded

    def _first_tier_part(self, text: str, straight_line: bool, kept: bool):
        """A part's first-tier object, and, where the second tier will compile it again
        (a straight-line part, ``kept``), its text's line count and the text compressed
        (zlib's fastest level, ~1 ms a part, beside Python's lowering): a 100,000-node
        chain's texts were 21 MB, a fifth of that compressed, kept until its second tier
        is in."""
        again = kept and straight_line
        obj = self._compile_part(text, straight_line, None, instcombine=not again)
        return obj, ((text.count("\n"), zlib.compress(text.encode(), 1)) if again else None)

    def _compile_part(self, text: str, straight_line: bool = False, machine=None,
                      instcombine: bool = True, size: int = LARGE_MODULE) -> bytes:
        """One part's object, in an LLVM context of its own (a thread may compile it while
        another uses the global context).  ``straight_line``: the part is scalar code
        written from the graph's operations (no loops, nothing left to share), and only
        instcombine runs on it: the O1 pipeline cost 0.55 s on Lennard-Jones N=60's parts
        for calls 0-5% faster than instcombine alone — or, when the second tier will
        compile it again (``instcombine=False``), nothing: the first tier's parts take
        25% less time (Lennard-Jones N=60: 0.26 s instead of 0.34), and run until the
        second tier's are ready.  Other code gets the pipeline of a module of ``size``
        lines (a part: a large module's)."""
        context = llvm.create_context()
        module = None
        try:
            module = self._parsed(text, context)
            if straight_line:
                if instcombine:
                    self._instcombine(module)
            else:
                self.optimize(module, size)
            return (machine or self.quick_machine).emit_object(module)
        finally:        # the module before its context
            if module is not None:
                module.close()
            context.close()


# ---- tier 2: straight-line programs optimised in the background -----------------------
TIERED = os.environ.get("SYMGRAD_TIERED", "1") != "0"
QUIET = 0.1     # seconds without a compile someone waits for before a second-tier part
MAX_PENDING = 8     # programs waiting for their second tier; more compile one tier only
# at exit, second tiers bound for the disk cache are finished first when they are this
# many lines of IR or fewer in all (~0.1-0.3 s of LLVM), for this many seconds at most
EXIT_LINES = 20_000
EXIT_WAIT = 1.0
# modules of this many lines or more (and fewer than LARGE_MODULE) are compiled quickly
# first: W9's gradients (1,500-1,900 lines) took 0.10-0.19 s to optimise, and its
# forward passes (470-490 lines, loops) 29-39 ms where the quick compile takes 3 ms
TIER_LINES = 300
# fast-math flags on an instruction: an optimiser may then reorder or fuse the arithmetic,
# and the two tiers could differ
_FAST_MATH = re.compile(r"= (?:fadd|fsub|fmul|fdiv|frem|fneg|fcmp|call|select|phi)"
                        r"(?: \w+)*? (?:fast|reassoc|contract|nnan|ninf|nsz|arcp|afn)\b")


class _Upgrades:
    """One thread that recompiles straight-line programs optimised (``JIT._upgrade``),
    a program at a time, after their first tier is in use.

    At exit, second tiers for the disk cache of at most EXIT_LINES lines of IR in all
    are finished first (a script that compiles and exits leaves them for its next run:
    the first tier is never stored), for EXIT_WAIT seconds at most; then the work not yet
    started is dropped and the part in progress finished (the thread is joined, before
    the interpreter's shutdown), so LLVM is never torn down under it.  Around ``fork`` the JIT's
    and llvmlite's locks are held, so a child never inherits them taken by this thread
    (which the child does not have): the fork waits for the step in progress."""

    def __init__(self):
        self._pool = None
        self._hooked = False
        self.cancelled = False
        self.exiting = False            # at exit, finishing what the disk cache gets
        self.pending = 0                # programs submitted and not yet done
        self.stored = 0                 # their lines of IR bound for the disk cache
        self._guard = threading.Lock()

    def submit(self, fn, *args, stored=0):
        with self._guard:
            if not self._hooked:
                # threading runs exit hooks in reverse order of registration: ours before
                # the executors' (registered on import), which would run every queued program
                register = getattr(threading, "_register_atexit", None)
                if register is None:
                    import atexit
                    register = atexit.register
                register(self.stop)
                # this thread takes the JIT's lock, then llvmlite's: so does a fork
                locks = [get().lock, _llvmlite_lock()]
                if None not in locks and hasattr(os, "register_at_fork"):
                    def take():
                        for lock in locks:
                            lock.acquire()

                    def give():
                        for lock in reversed(locks):
                            lock.release()

                    def in_child():     # the thread is the parent's: a child makes its own
                        give()
                        self._pool, self.pending, self.stored = None, 0, 0
                        get()._foreground = 0       # (compiles of the parent's threads)
                    os.register_at_fork(before=take, after_in_parent=give,
                                        after_in_child=in_child)
                self._hooked = True
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(1, "symgrad-tier2")
            future = self._pool.submit(fn, *args)
            self.pending += 1
            self.stored += stored
        future.add_done_callback(functools.partial(self._done, stored))
        return future

    def _done(self, stored, _):
        with self._guard:
            self.pending -= 1
            self.stored -= stored

    def room(self) -> bool:
        """Whether another program may take two tiers: each waiting one holds its IR text,
        and a process that compiles without pause would queue them all."""
        return self.pending < MAX_PENDING

    def stop(self):
        """At exit (see the class)."""
        if self._pool is not None and 0 < self.stored <= EXIT_LINES and \
                cache.directory() is not None:
            self.exiting = True             # no compile will come: no quiet to wait for
            wait_optimized(EXIT_WAIT)
        self.cancelled = True
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def wait_optimized(timeout=None) -> bool:
    """Wait until the optimised second tiers of the code compiled so far are in; True when
    nothing is left, False when ``timeout`` seconds passed first."""
    pool = _upgrades._pool
    if pool is None:
        return True
    try:
        marker = pool.submit(lambda: None)      # one thread, in order: after all before it
    except RuntimeError:                        # shut down: at exit
        return True
    return not concurrent.futures.wait([marker], timeout).not_done


def _llvmlite_lock():
    """The lock llvmlite takes around every call into LLVM (a private attribute: None if
    another llvmlite keeps it elsewhere)."""
    from llvmlite.binding import ffi
    lock = getattr(getattr(ffi.lib, "_lock", None), "_lock", None)
    return lock if hasattr(lock, "acquire") and hasattr(lock, "release") else None


_upgrades = _Upgrades()

class _ProcessSetting:
    """A process-wide setting changed while any compile needs it: the first of nested or
    concurrent users saves the user's value (``change()`` returns it) and the last puts it
    back (``restore(saved)``), so it is restored once, whatever ran in between."""

    def __init__(self, change, restore):
        self._change, self._restore = change, restore
        self._depth, self._saved = 0, None
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def __call__(self):
        with self._lock:
            if self._depth == 0:
                self._saved = self._change()
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    self._restore(self._saved)


def _switch_fast():
    saved = sys.getswitchinterval()
    sys.setswitchinterval(min(saved, 0.0001))
    return saved


# A 0.1 ms thread switch interval while a program is lowered and its parts compiled. The
# worker needs the interpreter's lock between its LLVM calls (a dozen per part) and by
# default waits up to 5 ms for the lowering thread to let go each time: Lennard-Jones
# N=60's parts finished 0.34-0.46 s after the lowering, 0.22-0.28 s at 0.5 ms.  With its
# parts lowered as the schedule makes them, the worker runs beside the schedule too: a
# part took 16-19 ms at 0.5 ms and 8-12 ms at 0.1 ms (7 ms alone), and the compile ended
# 0.1 s sooner.
_short_switches = _ProcessSetting(_switch_fast, sys.setswitchinterval)

PROMOTE_AFTER = 100_000     # tracked objects made during the pause (a ~20 ms young pass)


def _pause_collector():
    enabled = gc.isenabled()
    gc.disable()
    return enabled


def _resume_collector(enabled):
    if not enabled:         # a user's gc.disable() stands
        return
    if gc.get_count()[0] > PROMOTE_AFTER and gc.get_freeze_count() == 0:
        # What a big compile made and kept (the reverse graph's nodes) joins the oldest
        # generation at once: left young, the first young pass after the pause walks all
        # of it (45 ms after Lennard-Jones N=60's compile), the next middle pass again, and
        # its count brings a full pass forward.  freeze() + unfreeze() moves the young
        # objects to the oldest generation without walking them.  Only for big compiles:
        # a compiled function dropped soon after is cyclic garbage (its graph, IR objects,
        # ctypes types), which a young pass frees cheaply and, once old, only a full pass
        # does (5,000 small compiles kept 210 MB more).  Skipped where the user froze
        # objects: unfreeze() would thaw theirs too.
        gc.freeze()
        gc.unfreeze()
    gc.enable()


# Building graphs allocates many small objects that live on, so Python's cyclic collector
# runs again and again over everything alive; it gets nothing back, and took most of a
# compile served from the cache (and a gen-2 pass 30-55 ms of W9's 70 ms compile).  Paused
# for a compile and for an entry's build and call glue on its first call, as it was after.
collector_paused = _ProcessSetting(_pause_collector, _resume_collector)


_jit: JIT | None = None
_made = threading.Lock()


def get() -> JIT:
    """The process's JIT, made on first use."""
    global _jit
    if _jit is None:
        with _made:
            if _jit is None:
                _jit = JIT()
    return _jit


# ---- the public face --------------------------------------------------------------------------
def target_machine():
    return get().machine


def lookup(key: str, names, memory_key: str | None = None) -> Loaded | None:
    """Code compiled before for ``key``: in this process, or from the disk cache.
    ``memory_key`` names it in this process's table when that differs from ``key``."""
    return get().lookup(key, names, memory_key)


def load(ir_text: str, names: list[str], key: str | None = None,
         memory_key: str | None = None, optimize_ir: bool = True) -> Loaded:
    """Parse, verify, optimise and compile ``ir_text`` to an object, load it and return the
    entry addresses; with a ``key``, the object is also written to the disk cache.
    ``optimize_ir=False`` skips the IR pipeline and uses the fast code generator (for
    straight-line glue, where neither gains anything)."""
    return get().load(ir_text, names, key, memory_key, optimize_ir)


def load_parts(produce, names: list[str], key: str | None = None,
               memory_key: str | None = None, tiered: bool = True, pays=None) -> Loaded:
    """``load`` for a program lowered in parts (see ``JIT.load_parts``); ``tiered``:
    straight-line code may be optimised in the background (see ``JIT._upgrade``)."""
    return get().load_parts(produce, names, key, memory_key, tiered, pays)


def optimized(ir_text: str) -> str:
    """``ir_text`` after the optimisation pipeline (for reading; nothing is loaded)."""
    jit = get()
    with jit.lock:
        return str(jit.module(ir_text))


def emit_assembly(ir_text: str) -> str:
    """Host assembly of ``ir_text`` after the optimisation pipeline."""
    jit = get()
    with jit.lock:
        return jit.machine.emit_assembly(jit.module(ir_text))


def emit_object(ir_text: str) -> bytes:
    """Position-independent native object code for ``ir_text`` (ahead-of-time export)."""
    jit = get()
    with jit.lock:
        tm = _host_machine(opt=3, reloc="pic", codemodel="default")
        module = llvm.parse_assembly(ir_text)   # plain libm names: links against -lm
        module.verify()
        module.triple = tm.triple
        module.data_layout = str(tm.target_data)
        jit.optimize(module, ir_text.count("\n"))
        return tm.emit_object(module)
