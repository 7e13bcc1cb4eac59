"""One table for every operator: value, VJP with a random seed, and a second-order
product, against PyTorch float64 and central finite differences (JAX's
grad_test_spec / tinygrad's helper_test_op habit)."""
import numpy as np
import pytest
import torch

from symgrad.compiler import ELEMENTWISE, STRUCTURED, Graph
from symgrad.compiler import functions as F
from tests.conftest import fd_vjp, torch_hvp, torch_vjp

POS = "positive"
# name, symgrad builder, torch builder, operand shapes, domain
TABLE = [
    ("add", lambda a, b: a + b, lambda a, b: a + b, [(3, 4), (4,)], None),
    ("sub", lambda a, b: a - b, lambda a, b: a - b, [(3, 1), (1, 4)], None),
    ("mul", lambda a, b: a * b, lambda a, b: a * b, [(2, 3), (2, 3)], None),
    ("div", lambda a, b: a / b, lambda a, b: a / b, [(5,), (5,)], POS),
    ("neg", lambda a: -a, lambda a: -a, [(4,)], None),
    ("pow", lambda a, b: a ** b, lambda a, b: a ** b, [(3,), (3,)], POS),
    ("pow_const", lambda a: a ** 3, lambda a: a ** 3, [(3, 2)], None),
    ("exp", F.exp, torch.exp, [(6,)], None),
    ("log", F.log, torch.log, [(6,)], POS),
    ("sqrt", F.sqrt, torch.sqrt, [(6,)], POS),
    ("sin", F.sin, torch.sin, [(2, 3)], None),
    ("cos", F.cos, torch.cos, [(2, 3)], None),
    ("tan", F.tan, torch.tan, [(5,)], "small"),
    ("tanh", F.tanh, torch.tanh, [(5,)], None),
    ("sigmoid", F.sigmoid, torch.sigmoid, [(5,)], None),
    ("relu", F.relu, torch.relu, [(7,)], None),
    ("abs", F.abs, torch.abs, [(7,)], None),
    ("maximum", F.maximum, torch.maximum, [(4,), (3, 4)], None),
    ("minimum", F.minimum, torch.minimum, [(4,), (4,)], None),
    ("sum_all", lambda a: a.sum(), lambda a: a.sum(), [(3, 4)], None),
    ("sum_axis", lambda a: a.sum(1), lambda a: a.sum(1), [(3, 4, 2)], None),
    ("sum_keep", lambda a: a.sum((0, 2), keepdims=True),
     lambda a: a.sum((0, 2), keepdim=True), [(3, 4, 2)], None),
    ("mean", lambda a: a.mean(0), lambda a: a.mean(0), [(3, 4)], None),
    ("reshape", lambda a: a.reshape(4, 3) * 2, lambda a: a.reshape(4, 3) * 2, [(3, 4)], None),
    ("transpose", lambda a: a.T * a.T, lambda a: a.T * a.T, [(3, 4)], None),
    ("transpose_reshape", lambda a: a.T.reshape(-1), lambda a: a.T.reshape(-1), [(3, 4)], None),
    ("broadcast", lambda a: a.broadcast_to((3, 4)) * 1.5,
     lambda a: a.broadcast_to((3, 4)) * 1.5, [(4,)], None),
    ("matmul", lambda a, b: a @ b, lambda a, b: a @ b, [(3, 4), (4, 2)], None),
    ("matmul_vec", lambda a, b: a @ b, lambda a, b: a @ b, [(3, 4), (4,)], None),
    ("matmul_T", lambda a, b: a @ b.T, lambda a, b: a @ b.T, [(3, 4), (2, 4)], None),
]
# every elementwise operator (piecewise ones have a zero second derivative away from
# their kinks), plus a few structured ones
SECOND_ORDER = {"add", "sub", "mul", "div", "neg", "pow", "pow_const", "exp", "log", "sqrt",
                "sin", "cos", "tan", "tanh", "sigmoid", "relu", "abs", "maximum", "minimum",
                "broadcast", "matmul", "sum_all", "transpose"}


def _values(shapes, domain, rng, dtype=np.float64):
    out = []
    for s in shapes:
        v = rng.standard_normal(s)
        if domain == POS:
            v = np.abs(v) + 0.5
        elif domain == "small":
            v = v * 0.4
        out.append(v.astype(dtype))
    return out


def _compile(build, shapes, dtype=np.float64):
    g = Graph(dtype)
    xs = [g.input(f"x{k}", s) for k, s in enumerate(shapes)]
    out = build(*xs)
    return g, xs, out, g.compile([out], xs)


@pytest.mark.parametrize("name,build,tbuild,shapes,domain", TABLE, ids=[r[0] for r in TABLE])
def test_value_and_vjp_match_torch_and_finite_differences(name, build, tbuild, shapes, domain):
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    g, xs, out, f = _compile(build, shapes)
    values = _values(shapes, domain, rng)
    seed = rng.standard_normal(out.shape)
    value, grads = f.vjp(*values, seed=seed)
    t_value, t_grads = torch_vjp(tbuild, values, seed)
    np.testing.assert_allclose(value, t_value, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(f(*values), t_value, rtol=1e-10, atol=1e-12)
    for mine, theirs in zip(grads, t_grads):
        np.testing.assert_allclose(mine, theirs, rtol=1e-10, atol=1e-12)
    for mine, fd in zip(grads, fd_vjp(lambda *v: f(*v), values, seed)):
        np.testing.assert_allclose(mine, fd, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,build,tbuild,shapes,domain",
                         [r for r in TABLE if r[0] in SECOND_ORDER],
                         ids=[r[0] for r in TABLE if r[0] in SECOND_ORDER])
def test_second_order_product_matches_torch(name, build, tbuild, shapes, domain):
    """Differentiate the reverse graph again: ∂/∂x ⟨vᵀJ, w⟩."""
    rng = np.random.default_rng(7)
    g = Graph()
    xs = [g.input(f"x{k}", s) for k, s in enumerate(shapes)]
    out = build(*xs)
    seed, ws = g.input("v", out.shape), [g.input(f"w{k}", s) for k, s in enumerate(shapes)]
    grads = g.grad([out], xs, [seed])
    inner = sum(((gr * w).sum() for gr, w in zip(grads, ws)), start=g.const(0.0))
    f = g.compile([inner], xs)
    values = _values(shapes, domain, rng)
    v, dirs = rng.standard_normal(out.shape), [rng.standard_normal(s) for s in shapes]
    _, second = f.vjp(*values, v, *dirs)
    for mine, theirs in zip(second, torch_hvp(tbuild, values, v, dirs)):
        np.testing.assert_allclose(mine, theirs, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name,build,tbuild,shapes,domain", TABLE, ids=[r[0] for r in TABLE])
def test_float32_within_1e_5(name, build, tbuild, shapes, domain):
    rng = np.random.default_rng(3)
    g, xs, out, f = _compile(build, shapes, np.float32)
    values = _values(shapes, domain, rng, np.float32)
    seed = rng.standard_normal(out.shape).astype(np.float32)
    value, grads = f.vjp(*values, seed=seed)
    assert np.asarray(value).dtype == np.float32 or np.isscalar(value)
    t_value, t_grads = torch_vjp(tbuild, values, seed)
    np.testing.assert_allclose(value, t_value, rtol=1e-5, atol=1e-5)
    for mine, theirs in zip(grads, t_grads):
        assert mine.dtype == np.float32
        np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-5)


def test_every_operator_has_a_row():
    covered = {r[0].split("_")[0] for r in TABLE} | {"sum", "reshape", "transpose", "matmul"}
    internal = {"heaviside", "sign", "copy"}   # the pieces partials are made of
    assert set(ELEMENTWISE) - internal - covered == set()
    assert set(STRUCTURED) - covered == set()
