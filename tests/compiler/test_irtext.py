"""The IR text builder (compiler/irtext.py): what it writes is valid IR that runs as built."""
import ctypes

import numpy as np
from llvmlite import ir

from symgrad.compiler import irtext
from symgrad.compiler.backend import jit
from symgrad.compiler.lower import loop

F64, I64, I32, PTR = ir.DoubleType(), ir.IntType(64), ir.IntType(32), ir.PointerType()


def _sum_of_clamped_squares():
    """``double f(ptr x, i64 n)``: Σ min(x_i², 4) over a loop with vectoriser hints, its
    accumulator an alloca placed in the entry block after that block is terminated."""
    module = irtext.Module("t")
    sqrt = module.declare("llvm.minimum.f64", ir.FunctionType(F64, [F64, F64]))
    assert module.declare("llvm.minimum.f64", sqrt.function_type) is sqrt   # declared once
    fn = irtext.Function(module, ir.FunctionType(F64, [PTR, I64]), "f")
    x, n = fn.args
    x.name = "x"
    x.add_attribute("noalias")
    b = irtext.Builder(fn.append_basic_block("entry"))
    with loop(b, n, "i", (("llvm.loop.interleave.count", 2),)) as i:
        with b.goto_entry_block():            # (the entry ends in a branch by now)
            acc = b.alloca(F64, 1, name="acc")
            b.store(ir.Constant(F64, 0.0), acc)
        v = b.load(b.gep(x, [i], source_etype=F64), typ=F64, name="v")
        square = b.call(sqrt, [b.fmul(v, v), ir.Constant(F64, 4.0)])
        b.store(b.fadd(b.load(acc, typ=F64), square), acc)
    b.ret(b.load(acc, typ=F64, name="v"))     # a name taken twice gets a suffix
    return module


def test_built_text_parses_verifies_and_runs():
    text = str(_sum_of_clamped_squares())
    assert '!{!"llvm.loop.interleave.count", i32 2}' in text
    assert text.index("alloca") < text.index("br label")      # placed before the branch
    loaded = jit.get().load(text, ["f"])
    f = ctypes.CFUNCTYPE(ctypes.c_double, ctypes.c_void_p, ctypes.c_int64)(
        loaded.addresses["f"])
    xs = np.array([0.5, -1.0, 3.0, 1.5, -2.5])
    assert f(xs.ctypes.data, xs.size) == float(np.minimum(xs * xs, 4.0).sum())


def test_names_are_unique_in_a_function_and_a_phi_takes_arms_added_later():
    module = irtext.Module("t")
    fn = irtext.Function(module, ir.FunctionType(I64, [I64]), "g")
    fn.args[0].name = "n"                    # a parameter's name is taken too
    b = irtext.Builder(fn.append_basic_block("entry"))
    assert b.add(fn.args[0], fn.args[0], name="n").ref != '%"n"'
    names = [b.add(fn.args[0], ir.Constant(I64, 1), name="a").ref for _ in range(3)]
    assert len(set(names)) == 3 and names[0] == '%"a"'
    assert fn.append_basic_block("a").name not in ("a", "entry")    # values and blocks share
    b.branch(fn.blocks[1])
    b.position_at_end(fn.blocks[1])
    phi = b.phi(I64, name="p")
    phi.add_incoming(ir.Constant(I64, 7), fn.blocks[0])
    later = b.add(phi, ir.Constant(I64, 1))
    phi.add_incoming(later, fn.blocks[1])      # an arm defined after the phi
    b.cbranch(b.icmp_unsigned("<", later, ir.Constant(I64, 10)), fn.blocks[1],
              fn.append_basic_block("out"))
    b.position_at_end(fn.blocks[2])
    b.ret(later)
    text = str(module)
    assert f'phi i64 [7, %"entry"], [{later.ref}, %"{fn.blocks[1].name}"]' in text
    loaded = jit.get().load(text, ["g"])     # (held: the code lives as long as it)
    g = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64)(loaded.addresses["g"])
    assert g(0) == 10
