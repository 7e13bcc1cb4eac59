"""The expression language: parsed with an allow-list, never evaluated as Python."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import sympy as sp

from symgrad.compiler import Graph, GraphError, ParseError, parse
from tests.oracle import fd_vjp


def test_a_program_builds_the_graph_it_says():
    p = parse("u3 = u1 + u2; u4 = u2*u3")
    assert [i.name for i in p.inputs] == ["u1", "u2"] and p.outputs == ["u3", "u4"]
    f = p.graph.compile([p["u4"]], p.inputs)
    assert f.vjp(2.0, 3.0) == (15.0, (3.0, 8.0))


@pytest.mark.parametrize("text, shapes, reference", [
    ("z = relu(x) * tanh(y) + maximum(x, y) / 2", {"x": (3,), "y": (3,)},
     lambda x, y: np.maximum(x, 0) * np.tanh(y) + np.maximum(x, y) / 2),
    ("z = sum((W @ x - y)**2) / 3", {"W": (3, 2), "x": (2,), "y": (3,)},
     lambda W, x, y: np.sum((W @ x - y) ** 2) / 3),
    ("z = x.sum(0) + x.T.mean(axis=1) - matmul(x.T, x).sum()", {"x": (2, 2)},
     lambda x: x.sum(0) + x.T.mean(axis=1) - (x.T @ x).sum()),
    ("h = sigmoid(x); z = (h * (1 - h)).reshape(3, 1).transpose().sum(1, True)", {"x": (3,)},
     lambda x: (lambda h: (h * (1 - h)).reshape(3, 1).T.sum(1, keepdims=True))(
         1 / (1 + np.exp(-x)))),
    ("z = sin(pi*x)**2 + -x + +x + 2**-1 + 1/0 * 0", {},
     lambda x: np.sin(np.pi * x) ** 2 + 0.5 + np.nan),
    ("z = exp(log(x)) + sqrt(x) + cosh(x) - sinh(x) + abs(-x) + sign(x)", {},
     lambda x: np.exp(np.log(x)) + np.sqrt(x) + np.cosh(x) - np.sinh(x) + abs(x) + np.sign(x)),
    # composites take their axis and other literals by position or keyword, joins a list
    ("z = softmax(x, axis=0) * log_softmax(x, 1) + logsumexp(x, 0, keepdims=True)",
     {"x": (2, 3)}, lambda x: np.exp(x) / np.exp(x).sum(0) * (x - np.log(np.exp(x).sum(
         1, keepdims=True))) + np.log(np.exp(x).sum(0, keepdims=True))),
    ("z = concatenate([x, sin(y)], axis=1) * stack([y, x], 0).sum(0).sum(1, True)",
     {"x": (2, 3), "y": (2, 3)},
     lambda x, y: np.concatenate([x, np.sin(y)], axis=1) * np.stack([y, x]).sum(0).sum(
         1, keepdims=True)),
    ("z = var(x, 1, ddof=1) + std(x, axis=0).sum() + cumsum(x, 1).sum(1) + prod(x, axis=1)"
     " + amax(x, axis=1) + norm(x, 1)", {"x": (2, 3)},
     lambda x: x.var(1, ddof=1) + x.std(0).sum() + np.cumsum(x, 1).sum(1) + x.prod(1)
     + x.max(1) + np.linalg.norm(x, axis=1)),
    ("z = clamp(x, max=0.9) + clip(x, 0.3, y) + expand_dims(flip(x, 0), 0).sum(0)"
     " + pad(x, ((0, 0), (1, 0)))[:, :-1] + broadcast_to(dot(y[0], y[1]), (2, 3))",
     {"x": (2, 3), "y": (2, 3)},
     lambda x, y: np.minimum(x, 0.9) + np.minimum(np.maximum(x, 0.3), y) + x[::-1]
     + np.pad(x, ((0, 0), (1, 0)))[:, :-1] + y[0] @ y[1]),
])
def test_programs_compute_what_numpy_computes(text, shapes, reference):
    p = parse(text, shapes)
    rng = np.random.default_rng(len(text))
    args = [np.abs(rng.standard_normal(i.shape)) + 0.1 for i in p.inputs]
    out = p[p.outputs[-1]]
    f = p.graph.compile([out], p.inputs)
    with np.errstate(all="ignore"):
        np.testing.assert_allclose(f(*args), reference(*args), rtol=1e-13)
    if "1/0" in text:
        return
    seed = np.ones(out.shape)
    _, grads = f.vjp(*args, seed=seed)
    for got, want in zip(grads, fd_vjp(lambda *a: np.ravel(f(*a)), args, np.ravel(seed))):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_a_3000_term_sum_parses():
    p = parse("z = " + " + ".join(f"x{k % 7}" for k in range(3000)))
    f = p.graph.compile([p["z"]])
    assert f(*[1.0] * 7) == 3000.0


CANARY = "/tmp/symgrad-parse-canary"
# text, a phrase of the error
HOSTILE = [
    (f"z = __import__('os').system('touch {CANARY}')", ".system() is not allowed"),
    (f"z = x*__import__('os').system('touch {CANARY}')", ".system() is not allowed"),
    ("z = __import__", "may not start with '_'"),
    ("z = x.__class__", "attribute .__class__ is not allowed"),
    ("z = x.__class__.__bases__[0].__subclasses__()", "not allowed"),
    ("z = ().__class__", "Tuple is not part"),
    ("z = getattr(x, '__class__')", "getattr() is not a symgrad function"),
    ("z = eval('1')", "eval() is not a symgrad function"),
    ("z = exec('import os')", "exec() is not a symgrad function"),
    ("z = open('/etc/passwd')", "open() is not a symgrad function"),
    ("z = (lambda: 1)()", "only named functions can be called"),
    ("z = lambda x: x", "Lambda is not part"),
    ("z = [x for x in (1, 2)]", "ListComp is not part"),
    ("z = {x: 1}", "Dict is not part"),
    ("z = [x, y]", "List is not part"),
    ("z = 'abc'", "not a number"),
    ("z = b'abc' * x", "not a number"),
    ("z = f'{x}'", "JoinedStr is not part"),
    ("z = x if y else x", "IfExp is not part"),
    ("z = (y := x)", "NamedExpr is not part"),
    ("z = x < y", None),
    ("z = 1 < 2", "needs an input or expression"),
    ("z = x is y", "comparison Is is not supported"),
    ("z = x in y", "comparison In is not supported"),
    ("z = x and y", "write logical_and(a, b)"),
    ("z = x[0]", "too many indices"),
    ("z = sin(*x)", "*arguments"),
    ("z = sin(x, **y)", "**arguments"),
    ("z = sum(x, dtype=float)", "keyword dtype="),
    ("z = x.sum(axis=x)", "must be a literal"),
    ("z = x.reshape(10**100)", "must be a literal"),
    ("z = x.reshape(100000000000000000000)", "out of range"),
    ("import os", "Import statements"),
    ("from os import system", "ImportFrom statements"),
    ("del x", "Delete statements"),
    ("global x", "Global statements"),
    ("z = x; z = x + 1", "already assigned"),
    ("x = x + 1", "input of this statement"),
    ("sin = x", "built-in name"),
    ("z = sin", "is a function: call it"),
    ("z = 1 + 2", "is a constant"),
    ("z = 1" + "0" * 5000 + " * x", "cannot parse"),         # Python's int-string limit
    ("z = " + "(" * 1000 + "x" + ")" * 1000, "cannot parse"),  # nesting limit
    ("z = " + "-" * 100000 + "x", "cannot parse"),
    ("z = x + * y", "cannot parse"),
    ("z = x\0", "cannot parse"),
    ("z = x @ 2", "is a number here"),
    ("a, b = x, y", "assign to one name"),
    ("z = x; ", None),                                        # fine: a trailing separator
]


@pytest.mark.parametrize("text, phrase", HOSTILE, ids=[t[:40] for t, _ in HOSTILE])
def test_hostile_text_is_refused_and_never_run(text, phrase):
    if os.path.exists(CANARY):
        os.unlink(CANARY)
    if phrase is None:
        assert parse(text).outputs == ["z"]
        return
    with pytest.raises(ParseError) as info:
        parse(text)
    message = str(info.value)
    assert phrase in message, message
    assert "\n" not in message and message.startswith("statement ")
    assert not os.path.exists(CANARY)


def test_the_cli_exits_2_with_one_line_for_every_hostile_program(tmp_path):
    # in a child process: a crash would show as a negative return code
    texts = [t for t, phrase in HOSTILE if phrase is not None]
    script = (
        "import contextlib, io, json, sys\n"
        "from symgrad.runtime.cli import main\n"
        "results = []\n"
        "for text in json.load(open(sys.argv[1])):\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):\n"
        "        code = main(['jacobian', text])\n"
        "    results.append((code, err.getvalue()))\n"
        "print(json.dumps(results))\n")
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "texts.json")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    for text, (code, err) in zip(texts, json.loads(done.stdout)):
        assert code == 2, (text[:60], err)
        assert err.count("\n") == 1 and err.startswith("symgrad jacobian: statement"), err
    assert not os.path.exists(CANARY)


def test_names_that_sympy_would_take_are_plain_inputs():
    # E, I, S, N, beta, gamma, lambda_ were SymPy objects under sympify
    p = parse("V = E*q + I + S + N + beta + gamma")
    assert [i.name for i in p.inputs] == ["E", "q", "I", "S", "N", "beta", "gamma"]
    f = p.graph.compile([p["V"]])
    assert f(2.0, 3.0, 1.0, 1.0, 1.0, 1.0, 1.0) == 11.0


def test_from_sympy_refuses_text():
    with pytest.raises(GraphError, match="never evaluated"):
        Graph.from_sympy(["__import__('os')"], [sp.Symbol("x")])


def test_number_literals():
    p = parse("z = 1e400 * x + 0x10 + 1_000")
    assert p.graph.compile([p["z"]])(1.0) == math.inf
    p = parse("z = 0x10 + x")
    assert p.graph.compile([p["z"]])(1.0) == 17.0


def test_indexing_in_the_expression_language():
    from symgrad.compiler import parse
    p = parse("f = (100*(x[1:] - x[:-1]**2)**2 + (1 - x[:-1])**2).sum(); "
              "g = prod(x[[0, 2, 2]]) + x[..., ::-1][0] + f", shapes={"x": (3,)})
    xv = np.array([1.0, 2.0, 3.0])
    rosen = np.sum(100 * (xv[1:] - xv[:-1] ** 2) ** 2 + (1 - xv[:-1]) ** 2)
    f = p.graph.compile(p["g"], wrt=[p.graph.node("x")])
    value, (grad,) = f.vjp(xv)
    assert value == rosen + 1 * 3 * 3 + 3
    np.testing.assert_allclose(grad, [-400 + 9, 1002, -200 + 6 + 1], rtol=1e-15)
    with pytest.raises(ParseError, match="out of bounds"):
        parse("y = x[3]", shapes={"x": (3,)})
    with pytest.raises(ParseError, match="literal"):
        parse("y = x[x]", shapes={"x": (3,)})
