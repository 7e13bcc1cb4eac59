"""Differential fuzzing: random graphs, compiled by symgrad, against PyTorch float64.

CI runs a few hundred cases; SYMGRAD_FUZZ_EXAMPLES=20000 runs a long campaign.
Every failure found is kept below as an explicit regression case."""
import os

import numpy as np
import pytest
from tests.oracle import lazy_torch as torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from symgrad.compiler import Graph
from tests.oracle import fd_vjp
from tests.fuzz.recipes import RuntimeOps, SymgradOps, TorchOps, recipes, replay

EXAMPLES = int(os.environ.get("SYMGRAD_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                derandomize="SYMGRAD_FUZZ_SEED" not in os.environ,
                suppress_health_check=list(HealthCheck))
TOL = {np.float64: dict(rtol=1e-9, atol=1e-11), np.float32: dict(rtol=1e-4, atol=1e-4)}


def _data(recipe, rng, dtype):
    return [rng.standard_normal(s).astype(dtype) for s in recipe[0]]


def _torch_reference(recipe, values, seeds, direction=None):
    ts = [torch.tensor(v.astype(np.float64), requires_grad=True) for v in values]
    outs = replay(recipe, ts, TorchOps())
    grads = torch.autograd.grad(outs, ts, [torch.tensor(s.astype(np.float64)) for s in seeds],
                                allow_unused=True, create_graph=direction is not None)
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, ts)]
    second = None
    if direction is not None:
        inner = sum((g * torch.tensor(w)).sum() for g, w in zip(grads, direction))
        second = ([torch.zeros_like(t) for t in ts] if not inner.requires_grad else
                  [torch.zeros_like(t) if s is None else s
                   for s, t in zip(torch.autograd.grad(inner, ts, allow_unused=True), ts)])
        second = [s.detach().numpy(force=True) for s in second]
    return ([o.detach().numpy(force=True) for o in outs],
            [g.detach().numpy(force=True) for g in grads], second)


def check_compiled(recipe, dtype, rng, second_order=True, finite_differences=False):
    g = Graph(dtype)
    xs = [g.input(f"x{k}", s) for k, s in enumerate(recipe[0])]
    outs = replay(recipe, xs, SymgradOps())
    f = g.compile(outs, xs)
    values = _data(recipe, rng, dtype)
    seeds = [rng.standard_normal(o.shape).astype(dtype) for o in outs]
    mine, grads = f.vjp(*values, seed=seeds)
    mine = mine if isinstance(mine, tuple) else (mine,)
    direction = [rng.standard_normal(s) for s in recipe[0]] if second_order else None
    t_out, t_grads, t_second = _torch_reference(recipe, values, seeds, direction)
    tol = TOL[dtype]
    for a, b in zip(mine, t_out):
        np.testing.assert_allclose(a, b, **tol)
    for a, b in zip(grads, t_grads):
        np.testing.assert_allclose(a, b, **tol)
    if second_order:
        # ∂/∂x ⟨vᵀJ, w⟩ through the reverse graph, differentiated again
        seed_in = [g.input(f"v{k}", o.shape) for k, o in enumerate(outs)]
        w_in = [g.input(f"w{k}", s) for k, s in enumerate(recipe[0])]
        first = g.grad(outs, xs, seed_in)
        inner = None
        for gr, w in zip(first, w_in):
            term = (gr * w).sum()
            inner = term if inner is None else inner + term
        f2 = g.compile([inner], xs, inputs=xs + seed_in + w_in)
        args = values + seeds + [w.astype(dtype) for w in direction]
        _, second = f2.vjp(*args)
        for a, b in zip(second, t_second):
            np.testing.assert_allclose(a, b, **{k: v * 10 for k, v in tol.items()})
    if finite_differences and dtype == np.float64:
        def scalar(*vals):
            out = f(*vals)
            outs = out if isinstance(out, tuple) else (out,)
            return np.concatenate([np.ravel(o) for o in outs])
        flat_seed = np.concatenate([np.ravel(s) for s in seeds])
        # central differences of ⟨f, v⟩ lose about eps·Σ|f_i·v_i| to rounding in each
        # evaluation, divided by the step (1e-6): with values of 10^7 (a loop of
        # squares) that is 10^-3, an error of the reference, not of symgrad
        rounding = 8 * np.finfo(np.float64).eps * np.abs(scalar(*values) * flat_seed).sum() / 1e-6
        for a, b in zip(grads, fd_vjp(scalar, values, flat_seed)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 + rounding)


@FUZZ
@given(recipe=recipes(loops=True), dtype=st.sampled_from([np.float64, np.float32]),
       data_seed=st.integers(0, 2**32 - 1))
def test_compiled_graphs_match_torch(recipe, dtype, data_seed):
    rng = np.random.default_rng(data_seed)
    check_compiled(recipe, dtype, rng, second_order=dtype == np.float64,
                   finite_differences=data_seed % 8 == 0)


def check_transform(recipe, transform, rng):
    """One transform of a random graph against torch.func, float64: forward mode (jvp;
    "forward": compiled for it alone, its jvp and Jacobian), the dense Jacobian (against
    jacfwd), the sparse Jacobian (its pattern holds every nonzero of torch's Jacobian,
    and its values equal them), the Hessian of ⟨outputs, v⟩
    (forward over reverse, dense and sparse), or vmap over a batch of 3 with some inputs
    unbatched (values, vᵀJ and the Jacobians)."""
    import symgrad.compiler as C
    g = Graph()
    xs = [g.input(f"x{k}", s) for k, s in enumerate(recipe[0])]
    outs = replay(recipe, xs, SymgradOps())
    if transform == "hessian":
        return _check_hessian(recipe, g, xs, outs, rng)
    # forward mode alone (mode="jvp": no reverse pass) for its jvp and Jacobian
    f = g.compile(outs, xs, mode="jvp" if transform == "forward" else "reverse")
    values = _data(recipe, rng, np.float64)
    fn = torch.func

    def t_fn(*ts):
        return tuple(replay(recipe, list(ts), TorchOps()))
    tol = TOL[np.float64]
    if transform in ("jvp", "forward"):
        tangents = [rng.standard_normal(s) for s in recipe[0]]
        mine, ju = f.jvp(*values, tangent=tangents)
        _, t_ju = fn.jvp(t_fn, tuple(map(torch.tensor, values)),
                         tuple(map(torch.tensor, tangents)))
        for a, b in zip(ju if len(outs) > 1 else (ju,), t_ju):
            np.testing.assert_allclose(a, b.numpy(), **tol)
    if transform in ("jacobian", "forward"):
        J = f.jacobian(*values)
        t_J = fn.jacfwd(t_fn, argnums=tuple(range(len(xs))))(*map(torch.tensor, values))
        for row, t_row in zip([J] if len(outs) == 1 else J, t_J):
            for a, b in zip(row, t_row):
                np.testing.assert_allclose(a, b.numpy(force=True), **tol)
    elif transform == "sparse":
        t_J = fn.jacrev(t_fn, argnums=tuple(range(len(xs))))(*map(torch.tensor, values))
        dense = np.block([[np.asarray(b).reshape(int(np.prod(o.shape)), int(np.prod(x.shape)))
                           for b, x in zip(row, xs)] for row, o in zip(t_J, outs)])
        pattern = f.jacobian_sparsity().toarray()
        assert not np.any((dense != 0) & ~pattern), "a nonzero outside the pattern"
        blocks = f.jacobian(*values, sparse=True)
        blocks = [blocks] if len(outs) == 1 else blocks
        mine = np.block([[b.toarray() for b in row] for row in blocks])
        np.testing.assert_allclose(mine, dense, **tol)
    elif transform == "vmap":     # some inputs unbatched (in_axes None), one at least not
        in_axes = [0] + [None if rng.random() < 0.3 else 0 for _ in xs[1:]]
        batch = [np.stack([rng.standard_normal(s) for _ in range(3)]) if ax == 0 else v
                 for s, ax, v in zip(recipe[0], in_axes, values)]
        seeds = [rng.standard_normal((3,) + o.shape) for o in outs]
        mine, grads = C.vmap(f, in_axes=tuple(in_axes)).vjp(*batch, seed=seeds)
        theirs = fn.vmap(t_fn, in_dims=tuple(in_axes))(*map(torch.tensor, batch))
        for a, b in zip(mine if len(outs) > 1 else (mine,), theirs):
            np.testing.assert_allclose(a, b.numpy(), **tol)
        for k in range(3):
            _, one = f.vjp(*[b[k] if ax == 0 else b for b, ax in zip(batch, in_axes)],
                           seed=[s[k] for s in seeds])
            for a, b in zip(grads, one):
                np.testing.assert_allclose(a[k], b, **tol)
        J = C.vmap(f, in_axes=tuple(in_axes)).jacobian(*batch)     # per element
        t_J = fn.vmap(fn.jacrev(t_fn, argnums=tuple(range(len(xs)))),
                      in_dims=tuple(in_axes))(*map(torch.tensor, batch))
        for row, t_row in zip([J] if len(outs) == 1 else J, t_J):
            for a, b in zip(row, t_row):
                np.testing.assert_allclose(a, b.numpy(force=True), **tol)


def _check_hessian(recipe, g, xs, outs, rng):
    """The Hessian of L = Σ_k ⟨out_k, v_k⟩ (v fixed random weights): dense, and sparse
    (its pattern holds every nonzero of torch.func.hessian's, and its values equal them)."""
    weights = [rng.standard_normal(o.shape) for o in outs]
    loss = None
    for o, v in zip(outs, weights):
        term = (o * g.const(v)).sum() if o.shape else o * float(v)
        loss = term if loss is None else loss + term
    f = g.compile([loss], xs)
    values = _data(recipe, rng, np.float64)

    def t_loss(*ts):
        return sum((o * torch.tensor(v)).sum()
                   for o, v in zip(replay(recipe, list(ts), TorchOps()), weights))
    t_H = torch.func.hessian(t_loss, argnums=tuple(range(len(xs))))(*map(torch.tensor, values))
    sizes = [int(np.prod(s)) for s in recipe[0]]
    dense = np.block([[b.numpy(force=True).reshape(m, n) for b, n in zip(row, sizes)]
                      for row, m in zip(t_H, sizes)])     # (force: torch's zero tensors)
    H = f.hessian(*values)
    H = [[H]] if len(xs) == 1 else H
    mine = np.block([[np.asarray(b).reshape(m, n) for b, n in zip(row, sizes)]
                     for row, m in zip(H, sizes)])
    tol = {k: v * 10 for k, v in TOL[np.float64].items()}
    np.testing.assert_allclose(mine, dense, **tol)
    assert not np.any((dense != 0) & ~f.hessian_sparsity(*values).toarray()), \
        "a nonzero outside the Hessian's pattern"
    blocks = f.hessian(*values, sparse=True)
    blocks = [[blocks]] if len(xs) == 1 else blocks
    np.testing.assert_allclose(np.block([[b.toarray() for b in row] for row in blocks]),
                               dense, **tol)


@settings(FUZZ, max_examples=max(EXAMPLES // 3, 20))
@given(recipe=recipes(max_steps=6, loops=True),
       transform=st.sampled_from(["jvp", "forward", "jacobian", "sparse", "hessian", "vmap"]),
       data_seed=st.integers(0, 2**32 - 1))
def test_transforms_match_torch_func(recipe, transform, data_seed):
    check_transform(recipe, transform, np.random.default_rng(data_seed))


@settings(FUZZ, max_examples=max(EXAMPLES // 3, 20))
@given(recipe=recipes(max_steps=6, loops=True), data_seed=st.integers(0, 2**32 - 1))
def test_runtime_matches_torch(recipe, data_seed):
    import symgrad.runtime as rt
    rng = np.random.default_rng(data_seed)
    values = _data(recipe, rng, np.float64)
    ts = [rt.tensor(v, dtype=rt.float64, requires_grad=True) for v in values]
    outs = replay(recipe, ts, RuntimeOps())
    seeds = [rng.standard_normal(tuple(o.shape)) for o in outs]
    loss = None
    for o, s in zip(outs, seeds):
        term = (o * rt.tensor(s, dtype=rt.float64)).sum()
        loss = term if loss is None else loss + term
    loss.backward()
    t_out, t_grads, _ = _torch_reference(recipe, values, seeds)
    for o, b in zip(outs, t_out):
        np.testing.assert_allclose(o.detach().numpy(), b, **TOL[np.float64])
    for t, b in zip(ts, t_grads):
        got = t.grad.numpy() if t.grad is not None else np.zeros_like(b)
        np.testing.assert_allclose(got, b, **TOL[np.float64])


# Regression cases found by the fuzzer (shrunk), kept explicit.
REGRESSIONS = [
    # a single output of shape (1,): seed=[array of shape (1,)] was read as one (1, 1) seed
    ([(3,)], [("sum", 0, (0,), True)], [1]),
    # sympy's evaluation turned the kernel's exponentials into sinh, which had no lowering
    ([(2, 1)], [("matmul_T", 0), ("binary", "pow_safe", 0, 1), ("unary", "neg", 0),
                ("unary", "neg", 0), ("unary", "exp_small", 2), ("unary", "log_safe", 5)],
     [1, 6]),
    # a sum of a sum joined its operand's loop instead of reading its result
    ([(2, 1)], [("sum", 0, (0,), False), ("unary", "neg", 0), ("sum", 1, (0,), False)], [1, 3]),
]


@pytest.mark.parametrize("recipe", REGRESSIONS)
def test_regressions(recipe):
    check_compiled(recipe, np.float64, np.random.default_rng(0))
