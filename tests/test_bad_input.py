"""Every public entry point × every kind of bad input: a documented exception whose
message names the argument, what was expected and what was given (docs/errors.md)."""
import math

import numpy as np
import pytest
import sympy as sp

import symgrad.runtime as rt
from symgrad.compiler import Graph, GraphError, ShapeError
from symgrad.runtime.cli import main as cli
from symgrad.compiler.backend import ArgumentError


def graph():
    g = Graph()
    x, y = g.input("x", (3,)), g.input("y", (3,))
    return g, x, y


def scalar_fn():
    g, x, y = graph()
    return g.compile([(x * y).sum()], [x, y])


def tensor_fn():
    g, x, y = graph()
    return g.compile([x * y], [x, y])


ONE = np.ones(3)


class _LyingShape(np.ndarray):
    shape = property(lambda self: (3,))


class _LyingDtype(np.ndarray):
    dtype = property(lambda self: np.dtype(np.float64))
Q, R = sp.Symbol("q"), sp.Symbol("r")

# entry point, category, call, exception type, words the message must contain
TABLE = [
    ("Graph.input", "shape", lambda: Graph().input("a", (2, -1)), ShapeError, ["(2, -1)", "non-negative"]),
    ("Graph.input", "overflow", lambda: Graph().input("a", (2**40, 2**40)), ShapeError, ["too many elements"]),
    ("Graph.input", "dtype", lambda: Graph().input("a", (2,), dtype=np.complex128), TypeError, ["float32 or float64", "complex128"]),
    ("Graph.input", "string dtype", lambda: Graph().input("a", dtype="banana"), TypeError, ["banana"]),
    ("Graph.input", "name", lambda: Graph().input("1x"), GraphError, ["identifier", "1x"]),
    ("Expr ops", "shape", lambda: graph()[1] + Graph().input("z", (4,)), GraphError, ["another graph"]),
    ("Expr ops", "broadcast", lambda: (lambda g, x, y: x + g.input("z", (4,)))(*graph()), ShapeError,
     ["(3,)", "(4,)"]),
    ("Expr ops", "string", lambda: graph()[1] + "s", TypeError, ["real number", "'s'"]),
    ("Expr ops", "None", lambda: graph()[1] * None, TypeError, ["real number", "None"]),
    ("Expr ops", "ragged list", lambda: graph()[1] * [1, [2, 3]], TypeError, ["array constant"]),
    ("Expr ops", "string", lambda: graph()[1] * "3", TypeError, ["real number", "Graph.input"]),
    ("Expr ops", "complex", lambda: graph()[1] * 1j, TypeError, ["real number", "1j"]),
    ("Expr ops", "bool", lambda: graph()[1] * True, TypeError, ["real number", "True"]),
    ("Expr.sum", "rank", lambda: graph()[1].sum(3), ShapeError, ["axis 3", "1 dims"]),
    ("Expr.reshape", "shape", lambda: graph()[1].reshape(2, 2), ShapeError, ["(3,)", "(2, 2)"]),
    ("Expr.transpose", "rank", lambda: graph()[1].transpose((1, 0)), ShapeError, ["permutation", "(1, 0)"]),
    ("Graph.matmul", "batched inner", lambda: (lambda g: g.input("a", (2, 2, 3)) @ g.input("b", (2, 2)))(Graph()),
     ShapeError, ["inner dimensions 3 and 2", "(2, 2, 3)"]),
    ("Graph.matmul", "scalar", lambda: (lambda g: g.input("a") @ g.input("b", (2, 2)))(Graph()),
     ShapeError, ["at least one dim"]),
    ("Graph.matmul", "shape", lambda: (lambda g: g.input("a", (2, 3)) @ g.input("b", (2, 3)))(Graph()),
     ShapeError, ["inner dimensions", "3", "2"]),
    ("Graph.compile", "no outputs", lambda: Graph().compile([]), GraphError, ["at least one output"]),
    ("Graph.compile", "not an expr", lambda: Graph().compile([3.0]), TypeError, ["graph expressions", "3.0"]),
    ("Graph.compile", "two graphs", lambda: graph()[0].compile([graph()[1]]), GraphError, ["another graph"]),
    ("Graph.compile", "inputs=", lambda: (lambda g, x, y: g.compile([x * y], inputs=[x]))(*graph()),
     GraphError, ["y", "inputs="]),
    ("call", "wrong shape", lambda: scalar_fn()(np.ones(4), ONE), ArgumentError, ["x", "(3,)", "(4,)"]),
    ("call", "wrong rank", lambda: scalar_fn()(np.ones((3, 1)), ONE), ArgumentError, ["x", "(3,)", "(3, 1)"]),
    ("call", "0-d for (3,)", lambda: scalar_fn()(np.array(1.0), ONE), ArgumentError, ["x", "(3,)", "()"]),
    ("call", "empty", lambda: scalar_fn()(np.ones(0), ONE), ArgumentError, ["x", "(0,)"]),
    ("call", "nested list", lambda: scalar_fn()([[1, 2, 3]], ONE), ArgumentError, ["x", "(1, 3)"]),
    ("call", "int dtype", lambda: scalar_fn()(np.ones(3, np.int64), ONE), TypeError, ["x", "float64", "int64", "astype"]),
    ("call", "bool", lambda: scalar_fn()(True, ONE), TypeError, ["x", "bool"]),
    ("call", "complex", lambda: scalar_fn()(np.ones(3, complex), ONE), TypeError, ["x", "complex128"]),
    ("call", "object", lambda: scalar_fn()(np.ones(3, object), ONE), TypeError, ["x", "object"]),
    ("call", "string", lambda: scalar_fn()("abc", ONE), TypeError, ["x", "str"]),
    ("call", "None", lambda: scalar_fn()(None, ONE), TypeError, ["x", "NoneType"]),
    ("call", "list of strings", lambda: scalar_fn()(["a", "b", "c"], ONE), TypeError, ["x", "cannot read"]),
    ("call", "too many", lambda: scalar_fn()(ONE, ONE, ONE), TypeError, ["2 inputs", "got 3"]),
    ("call", "missing", lambda: scalar_fn()(ONE), TypeError, ["missing", "y"]),
    ("call", "unknown name", lambda: scalar_fn()(ONE, z=ONE), TypeError, ["unknown input", "'z'"]),
    ("call", "twice", lambda: scalar_fn()(ONE, ONE, x=ONE), TypeError, ["given twice", "'x'"]),
    ("call", "huge int", lambda: scalar_fn()(10**400, ONE), TypeError, ["x", "too large"]),
    ("call", "numeric strings", lambda: scalar_fn()(["1", "2", "3"], ONE), TypeError, ["x", "not real numbers"]),
    ("call", "list of bools", lambda: scalar_fn()([True, False, True], ONE), TypeError, ["x", "bools"]),
    ("call", "masked array", lambda: scalar_fn()(np.ma.masked_array(ONE, [0, 1, 0]), ONE), TypeError,
     ["x", "masked arrays are not supported"]),
    ("call", "subclass lying about shape", lambda: scalar_fn()(np.ones(2).view(_LyingShape), ONE),
     ArgumentError, ["x", "(3,)", "(2,)"]),
    ("call", "subclass lying about dtype", lambda: scalar_fn()(np.ones(3, np.int8).view(_LyingDtype), ONE),
     TypeError, ["x", "int8"]),
    ("Expr ops", "broadcast too large", lambda: Graph().input("x").broadcast_to((2**31, 2**30)), ShapeError,
     ["too many elements"]),
    ("vjp", "seeds for inputs", lambda: (lambda g, x, y: g.compile([x * y, x + y], [x, y]).vjp(
        2.0, seed=(3.0, 1.0, 1.0)))(*(lambda g: (g, g.input("x"), g.input("y")))(Graph())),
     TypeError, ["missing", "y"]),
    ("vjp", "seed shape", lambda: tensor_fn().vjp(ONE, ONE, seed=np.ones(4)), ArgumentError, ["seed", "(3,)", "(4,)"]),
    ("vjp", "no seed", lambda: tensor_fn().vjp(ONE, ONE), ArgumentError, ["(3,)", "seed="]),
    ("vjp", "seed dtype", lambda: tensor_fn().vjp(ONE, ONE, seed=np.ones(3, np.int32)), TypeError, ["seed", "int32"]),
    ("vjp", "seed string", lambda: tensor_fn().vjp(ONE, ONE, seed="v"), TypeError, ["seed", "str"]),
    ("vjp", "seed count", lambda: (lambda g, x, y: g.compile([x, y], [x]).vjp(ONE, ONE, seed=[ONE]))(*graph()),
     ArgumentError, ["2 outputs", "got 1"]),
    ("vjp", "no wrt", lambda: (lambda g, x, y: g.compile([x * 2]).vjp(ONE))(*graph()), TypeError, ["wrt"]),
    ("Graph.grad", "seed shape", lambda: (lambda g, x, y: g.grad([x * y], [x], [g.input("s", (2,))]))(*graph()),
     GraphError, ["seed", "(2,)", "(3,)"]),
    ("Graph.grad", "no seed", lambda: (lambda g, x, y: g.grad([x * y], [x]))(*graph()), GraphError, ["(3,)", "seed"]),
    ("from_sympy", "unsupported function", lambda: Graph.from_sympy([sp.gamma(Q)], [Q]), GraphError, ["gamma", "supported"]),
    ("from_sympy", "undeclared symbol", lambda: Graph.from_sympy([Q + R], [Q]), GraphError, ["r", "not an input"]),
    ("from_sympy", "complex constant", lambda: Graph.from_sympy([Q * sp.I], [Q]), GraphError, ["I", "real"]),
    ("from_sympy", "inputs not symbols", lambda: Graph.from_sympy([Q], ["q"]), GraphError, ["Symbols", "'q'"]),
    ("runtime.tensor", "string", lambda: rt.tensor("abc"), TypeError, ["str"]),
    ("runtime.tensor", "ragged list", lambda: rt.tensor([[1, 2], [3]]), TypeError, ["rectangular"]),
    ("runtime.tensor", "complex", lambda: rt.tensor([1j]), TypeError, ["complex128"]),
    ("runtime.tensor", "int requires grad", lambda: rt.tensor([1, 2], requires_grad=True), RuntimeError, ["floating point", "int64"]),
    ("runtime ops", "broadcast", lambda: rt.ones(2) + rt.ones(3), ShapeError, ["(2,)", "(3,)"]),
    ("runtime ops", "string operand", lambda: rt.ones(2) * "a", TypeError, ["str"]),
    ("runtime ops", "matmul", lambda: rt.ones(2, 3) @ rt.ones(2, 3), RuntimeError, ["2x3 and 2x3"]),
    ("runtime ops", "view", lambda: rt.ones(4).view(3), ShapeError, ["(4,)", "(3,)"]),
    ("backward", "implicit seed", lambda: (rt.ones(2, requires_grad=True) * 2).backward(), RuntimeError, ["scalar outputs", "(2,)"]),
    ("backward", "seed shape", lambda: (rt.ones(2, requires_grad=True) * 2).backward(rt.ones(3)), RuntimeError, ["(3,)", "(2,)"]),
    ("backward", "seed string", lambda: (rt.ones(2, requires_grad=True) * 2).backward("a"), TypeError, ["str"]),
    ("backward", "no grad", lambda: rt.ones(2).sum().backward(), RuntimeError, ["does not require grad"]),
    ("autograd.grad", "unused input", lambda: rt.autograd.grad((rt.ones(2, requires_grad=True) * 2).sum(),
                                                               rt.ones(2, requires_grad=True)), RuntimeError, ["allow_unused"]),
    ("autograd.grad", "grad_outputs count", lambda: rt.autograd.grad([rt.ones(1, requires_grad=True) * 2], [rt.ones(1)],
                                                                     grad_outputs=[None, None]), RuntimeError, ["2 entries", "1 outputs"]),
    ("nn.MSELoss", "shapes", lambda: rt.nn.MSELoss()(rt.ones(2), rt.ones(3)), ValueError, ["(2,)", "(3,)"]),
    ("nn.MSELoss", "reduction", lambda: rt.nn.MSELoss(reduction="avg"), ValueError, ["avg is not a valid value for reduction"]),
    ("nn.Linear", "input shape", lambda: rt.nn.Linear(2, 1)(rt.ones(3, 3)), RuntimeError, ["3x3 and 2x1"]),
    ("optim.SGD", "empty", lambda: rt.optim.SGD([], lr=0.1), ValueError, ["empty"]),
    ("optim.SGD", "non-leaf", lambda: rt.optim.SGD([rt.ones(2, requires_grad=True) * 2], lr=0.1), ValueError, ["leaf"]),
    ("optim.SGD", "negative lr", lambda: rt.optim.SGD([rt.ones(2, requires_grad=True)], lr=-1), ValueError, ["learning rate"]),
]


@pytest.mark.parametrize("entry, category, call, error, words", TABLE,
                         ids=[f"{r[0]}-{r[1]}" for r in TABLE])
def test_bad_input_raises_a_clear_error(entry, category, call, error, words):
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    for word in words:
        assert word in message, f"{entry} / {category}: {word!r} not in {message!r}"


CLI = [
    (["jacobian", "u3 = u1 + * u2"], ["statement 1", "cannot parse"]),
    (["jacobian", "3x = u1"], ["statement 1", "cannot parse"]),
    (["jacobian", "z = __import__('os').system('echo PWNED')"], ["not allowed"]),
    (["jacobian", "z = x*__import__('os').system('echo PWNED')"], ["not allowed"]),
    (["graph", "z = __import__('os').getcwd()"], ["not allowed"]),
    (["compile", "a = x; z = eval('x')"], ["statement 2", "eval() is not a symgrad function"]),
    (["jacobian", "x = x + 1"], ["x is an input"]),
    (["jacobian", "z = [x, y]"], ["List is not part"]),
    (["jacobian", "z = x[0]"], ["too many indices"]),
    (["jacobian", "z = sin(x)", "--shape", "X=3"], ["--shape X", "not an input", "inputs: x"]),
    (["jacobian", "u3 = u1 + u2", "--at", "u1=2"], ["missing", "u2"]),
    (["jacobian", "u3 = u1 + u2", "--at", "u1=abc,u2=1"], ["'abc'", "not a number"]),
    (["jacobian", "u3 = u1 + u2", "--at", "u1"], ["name=value"]),
    (["jacobian", "z = gamma(x)"], ["gamma"]),
    (["jacobian", "z = x*y", "--shape", "x=3", "--shape", "y=4"], ["(3,)", "(4,)"]),
    (["jacobian", "z = x", "--shape", "x=a"], ["--shape", "name=3"]),
    (["graph", "u3 = u1 + u2", "--out", "g.gif"], [".dot, .svg or .png"]),
    (["compile", "z = x*y", "--wrt", "q"], ["--wrt", "q"]),
    (["compile", "z = x*y", "--emit", "shared"], ["-o"]),
    (["examples", "run", "999"], ["no example"]),
]


@pytest.mark.parametrize("argv, words", CLI, ids=[" ".join(a[:2]) + f"-{k}" for k, (a, _) in enumerate(CLI)])
def test_command_line_errors_are_one_line_with_exit_2(argv, words, capsys):
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    for word in words:
        assert word in err, f"{word!r} not in {err!r}"


# ---- values that are not errors --------------------------------------------------------------
def test_non_contiguous_fortran_and_read_only_arrays_give_correct_results():
    f = scalar_fn()
    base = np.arange(12.0).reshape(3, 4)
    strided, fortran = base[:, 1], np.asfortranarray(base)[:, 2]
    read_only = np.array([1.0, 2.0, 3.0])
    read_only.flags.writeable = False
    for x in (strided, fortran, read_only, base.T[1]):
        value, (dx, dy) = f.vjp(x, ONE * 2)
        assert value == pytest.approx(2 * x.sum())
        np.testing.assert_array_equal(dx, 2 * ONE)
        np.testing.assert_array_equal(dy, x)


def test_nan_and_inf_propagate_as_ieee_says():
    from symgrad.compiler import exp, log, sqrt
    g = Graph()
    x, y = g.input("x", (5,)), g.input("y", (5,))
    f = g.compile([log(x) * y + sqrt(x) - exp(y) / x], [x, y])
    xs = np.array([np.nan, np.inf, -1.0, 0.0, 2.0])
    ys = np.array([1.0, 2.0, np.inf, -np.inf, np.nan])
    with np.errstate(all="ignore"):
        expected = np.log(xs) * ys + np.sqrt(xs) - np.exp(ys) / xs
    got = f(xs, ys)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_array_equal(got[~np.isnan(got)], expected[~np.isnan(expected)])
    _, (dx, dy) = f.vjp(xs, ys, seed=np.ones(5))
    assert math.isnan(dx[0]) and math.isnan(dy[0])


def test_real_identities_only_under_fast_math():
    # x/x is 1 after sympy's canonicalisation, also at x = 0: only when asked for
    g = Graph()
    x = g.input("x")
    assert math.isnan(g.compile([x / x])(0.0))
    assert g.compile([x / x], fast_math=True)(0.0) == 1.0
    with pytest.raises(TypeError, match="fast_math must be True or False"):
        g.compile([x], fast_math="yes")


def test_one_element_array_versus_zero_d():
    g = Graph()
    s, v = g.input("s"), g.input("v", (1,))
    f = g.compile([s * v], [s, v])
    assert f.vjp(2.0, np.array([3.0]), seed=np.array([1.0]))[1] == (3.0, pytest.approx([2.0]))
    assert f.vjp(np.array(2.0), [3.0], seed=[1.0])[1][0] == 3.0
    with pytest.raises(ArgumentError, match=r"v: expected shape \(1,\), got \(\)"):
        f(2.0, np.array(3.0))


def test_command_line_files_never_lost_and_errors_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mylib.h").write_text("keep me")
    cases = [
        (["compile", "z = x*y", "--emit", "llvm", "-o", "nodir/out.ll"], "No such file"),
        (["compile", "z = x*y", "--emit", "llvm", "-o", str(tmp_path)], "Is a directory"),
        (["compile", "z = x*y", "--emit", "llvm", "-o", "/dev/full"], "No space left"),
        (["compile", "z = x*y", "--wrt", "x", "--emit", "shared", "-o", "nodir/l.so"],
         "does not exist"),
        (["compile", "z = x*y", "--wrt", "x", "--emit", "obj", "-o", str(tmp_path)],
         "is a directory"),
        (["graph", "u3 = u1 + u2", "--out", "nodir/g.dot"], "No such file"),
        (["compile", "z = x*y", "--wrt", "x", "--emit", "shared", "-o", "mylib.so"],
         "mylib.h exists"),
        (["compile", "z = x*y", "--wrt", "x", "--emit", "obj", "-o", "out.h"],
         "would be overwritten by the C header"),
    ]
    for argv, phrase in cases:
        assert cli(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and phrase in err, (argv, err)
    assert (tmp_path / "mylib.h").read_text() == "keep me"
    assert not (tmp_path / "out.h").exists() and not (tmp_path / "mylib.so").exists()
    monkeypatch.setenv("CC", "/nonexistent/cc -O2")      # never a silent substitute
    assert cli(["compile", "z = x*y", "--wrt", "x", "--emit", "shared", "-o", "l2.so"]) == 2
    assert "/nonexistent/cc is not an executable" in capsys.readouterr().err
    monkeypatch.delenv("CC")
    assert cli(["compile", "z = x*y", "--wrt", "x", "--emit", "shared", "-o", "mylib.so",
                "--force"]) == 0
    assert "symgrad" in (tmp_path / "mylib.h").read_text()
