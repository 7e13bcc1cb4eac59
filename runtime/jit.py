"""The LLVM JIT: parse, optimise and load modules; hand back native addresses.

Two MCJIT engines per process, created on first use and never collected (a
collected engine frees the code behind every function it loaded): one with full
code generation, one with the fast register allocator (codegen level 0) for very
large modules, where the greedy allocator and the SLP vectoriser grow
super-linearly with straight-line code.  One lock
around it: compiles from several threads are serialised, calls are not.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import threading
from dataclasses import dataclass

import llvmlite.binding as llvm

OPT_LEVEL = 3
# Above this many IR instructions, long straight-line code makes the SLP vectoriser and
# the greedy register allocator super-linear; compile such modules with less effort.
LARGE_MODULE = 20_000

_lock = threading.RLock()
_engines = {}            # "full" | "large" -> ExecutionEngine
_target_machine = None


def _init():
    global _target_machine
    if _engines:
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
    for kind, opt in (("full", 3), ("large", 0)):
        tm = target.create_target_machine(cpu=cpu, features=features, opt=opt,
                                          codemodel="jitdefault", jit=True)
        _engines[kind] = llvm.create_mcjit_compiler(llvm.parse_assembly(""), tm)
        if kind == "full":
            _target_machine = tm


def target_machine():
    with _lock:
        _init()
        return _target_machine


@dataclass
class Loaded:
    """What the engine hands back for one module."""
    addresses: dict          # function name -> address
    optimized_ir: str


def optimize(module: "llvm.ModuleRef", size: int) -> None:
    pto = llvm.create_pipeline_tuning_options(speed_level=OPT_LEVEL if size < LARGE_MODULE else 1)
    pto.loop_vectorization = True
    pto.slp_vectorization = size < LARGE_MODULE
    pb = llvm.create_pass_builder(_target_machine, pto)
    pm = pb.getModulePassManager()
    pm.run(module, pb)


def load(ir_text: str, names: list[str]) -> Loaded:
    """Parse, verify, optimise and JIT ``ir_text``; return the entry addresses."""
    with _lock:
        _init()
        module = llvm.parse_assembly(ir_text)
        module.verify()
        module.triple = _target_machine.triple
        module.data_layout = str(_target_machine.target_data)
        size = ir_text.count("\n")
        optimize(module, size)
        engine = _engines["full" if size < LARGE_MODULE else "large"]
        engine.add_module(module)
        engine.finalize_object()
        addresses = {n: engine.get_function_address(n) for n in names}
        return Loaded(addresses, str(module))


def emit_assembly(ir_text: str) -> str:
    with _lock:
        _init()
        module = llvm.parse_assembly(ir_text)
        module.triple = _target_machine.triple
        module.data_layout = str(_target_machine.target_data)
        optimize(module, ir_text.count("\n"))
        return _target_machine.emit_assembly(module)


ENTRY = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p)


def emit_object(ir_text: str) -> bytes:
    """Position-independent native object code for ``ir_text`` (ahead-of-time export)."""
    with _lock:
        _init()
        target = llvm.Target.from_default_triple()
        tm = target.create_target_machine(cpu=llvm.get_host_cpu_name(),
                                          features=llvm.get_host_cpu_features().flatten(),
                                          opt=3, reloc="pic", codemodel="default")
        module = llvm.parse_assembly(ir_text)
        module.verify()
        module.triple = tm.triple
        module.data_layout = str(tm.target_data)
        optimize(module, ir_text.count("\n"))
        return tm.emit_object(module)
