"""PyTorch semantics of the runtime, each against PyTorch itself where it computes."""
import math
import warnings

import numpy as np
import pytest
from tests.oracle import lazy_torch as T

import symgrad.runtime as torch
from symgrad.runtime import autograd, nn, optim

# op name, symgrad fn, torch fn, shapes, positive domain
OPS = [
    ("add", lambda a, b: a + b, lambda a, b: a + b, [(3, 4), (4,)], False),
    ("sub_scalar", lambda a: 3.0 - a, lambda a: 3.0 - a, [(5,)], False),
    ("mul", lambda a, b: a * b, lambda a, b: a * b, [(2, 3), (2, 1)], False),
    ("div", lambda a, b: a / b, lambda a, b: a / b, [(4,), (4,)], True),
    ("pow", lambda a: a ** 3, lambda a: a ** 3, [(4,)], False),
    ("pow_tensor", lambda a, b: a ** b, lambda a, b: a ** b, [(4,), (4,)], True),
    ("exp", lambda a: a.exp(), lambda a: a.exp(), [(4,)], False),
    ("log", lambda a: a.log(), lambda a: a.log(), [(4,)], True),
    ("sin", lambda a: torch.sin(a), lambda a: T.sin(a), [(4,)], False),
    ("cos", lambda a: a.cos(), lambda a: a.cos(), [(4,)], False),
    ("tanh", lambda a: a.tanh(), lambda a: a.tanh(), [(4,)], False),
    ("sigmoid", lambda a: a.sigmoid(), lambda a: a.sigmoid(), [(4,)], False),
    ("relu", lambda a: a.relu(), lambda a: a.relu(), [(6,)], False),
    ("sum_dim", lambda a: a.sum(1), lambda a: a.sum(1), [(3, 4)], False),
    ("mean", lambda a: a.mean(), lambda a: a.mean(), [(3, 4)], False),
    ("norm", lambda a: a.norm(), lambda a: a.norm(), [(3, 4)], False),
    ("view", lambda a: a.view(6, 2) * 2, lambda a: a.view(6, 2) * 2, [(3, 4)], False),
    ("T", lambda a: a.T * 1.5, lambda a: a.T * 1.5, [(3, 4)], False),
    ("matmul", lambda a, b: a @ b, lambda a, b: a @ b, [(3, 4), (4, 2)], False),
    ("mlp", lambda x, w: (x @ w).sigmoid().sum(), lambda x, w: (x @ w).sigmoid().sum(),
     [(5, 3), (3, 2)], False),
]


@pytest.mark.parametrize("name,fn,tfn,shapes,positive", OPS, ids=[o[0] for o in OPS])
def test_runtime_gradients_match_torch_float64(name, fn, tfn, shapes, positive):
    rng = np.random.default_rng(len(name))
    values = [rng.standard_normal(s) for s in shapes]
    if positive:
        values = [np.abs(v) + 0.5 for v in values]
    mine = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in values]
    theirs = [T.tensor(v, requires_grad=True) for v in values]
    out, tout = fn(*mine), tfn(*theirs)
    np.testing.assert_allclose(out.detach().numpy(), tout.detach().numpy(), rtol=1e-12)
    seed = rng.standard_normal(tout.shape)
    out.backward(torch.tensor(seed, dtype=torch.float64))
    tout.backward(T.tensor(seed))
    for m, t in zip(mine, theirs):
        np.testing.assert_allclose(m.grad.numpy(), t.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_float32_default_and_repr_like_pytorch():
    x = torch.ones(2, 2, requires_grad=True)
    assert x.dtype == np.float32 and x.grad_fn is None and x.is_leaf
    assert repr(x) == "tensor([[1., 1.],\n        [1., 1.]], requires_grad=True)"
    assert repr((x + 2).mean()) == "tensor(3., grad_fn=<MeanBackward0>)"
    assert repr(torch.tensor([2.0, 0.2, 0.02, 0.002])) == "tensor([2.0000, 0.2000, 0.0200, 0.0020])"
    assert repr(torch.tensor([51.2, 512.0, 0.0512])) == \
        "tensor([5.1200e+01, 5.1200e+02, 5.1200e-02])"
    assert repr(torch.tensor([1.0], dtype=torch.float64)) == "tensor([1.], dtype=torch.float64)"


def test_accumulation_and_zero():
    x = torch.ones(2, 2, requires_grad=True)
    x.sum().backward()
    x.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), 2 * np.ones((2, 2)))
    x.grad.data.zero_()
    x.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.ones((2, 2)))


def test_backward_w_equals_derivative_of_sum_y_w():
    w = np.array([[1.0, 0.1], [0.01, 0.001]])
    a = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64, requires_grad=True)
    (2 * a).view(2, 2).backward(torch.tensor(w, dtype=torch.float64))
    b = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64, requires_grad=True)
    ((2 * b).view(2, 2) * torch.tensor(w, dtype=torch.float64)).sum().backward()
    np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=1e-15)


def test_no_grad_context_and_decorator():
    x = torch.tensor(1.0, requires_grad=True)
    with torch.no_grad():
        y = x ** 3
    assert not y.requires_grad and y.grad_fn is None

    @torch.no_grad()
    def f(t):
        return t * 2
    assert not f(x).requires_grad
    with torch.no_grad():
        with torch.enable_grad():
            assert (x * 2).requires_grad
    assert torch.is_grad_enabled()


def test_errors_say_what_to_do():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="only for scalar outputs.*shape"):
        (x * 2).backward()
    with pytest.raises(RuntimeError, match=r"Mismatch in shape.*\(2, 2\).*\(\)"):
        (x * 2).sum().backward(torch.ones(2, 2))
    y = (x * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        y.backward()
    with pytest.raises(RuntimeError, match="in-place"):
        x.add_(1.0)
    with pytest.raises(RuntimeError, match="does not require grad"):
        torch.tensor([1.0]).sum().backward()


def test_retain_graph_allows_second_backward():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_array_equal(x.grad.numpy(), [4.0, 8.0])


def test_non_leaf_grad_warns_and_retain_grad_keeps_it():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    y = x * 3
    z = y.sum()
    y.retain_grad()
    z.backward()
    np.testing.assert_array_equal(y.grad.numpy(), [1.0, 1.0])
    w = x * 2
    w.sum().backward()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert w.grad is None
    assert "not a leaf" in str(caught[0].message)


def test_create_graph_gives_second_derivatives():
    x = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64, requires_grad=True)
    y = (x.sin() * x * x).sum()
    (g,) = autograd.grad(y, x, create_graph=True)
    g.sum().backward()
    tx = T.tensor([0.5, -1.0, 2.0], requires_grad=True, dtype=T.float64)
    (tg,) = T.autograd.grad((tx.sin() * tx * tx).sum(), tx, create_graph=True)
    tg.sum().backward()
    np.testing.assert_allclose(g.detach().numpy(), tg.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-10)


def test_second_derivatives_stay_right_when_the_backward_cache_evicts(monkeypatch):
    # the grad_fn of a create_graph gradient named its compiled graph by id(work): after
    # eviction a new graph could reuse the address and find the old compiled function
    monkeypatch.setattr(autograd, "CACHE_SIZE", 1)
    tokens = set()
    for k in range(60):
        x = torch.tensor([0.3 + k / 100], dtype=torch.float64, requires_grad=True)
        y = (x.sin() if k % 2 else x.cos() * x).sum()
        (g,) = autograd.grad(y, x, create_graph=True)
        tokens.add(g.grad_fn.key)
        (h,) = autograd.grad(g.sum(), x)
        v = float(x.detach().numpy()[0])
        want = -np.sin(v) if k % 2 else -2 * np.sin(v) - v * np.cos(v)
        assert float(h.numpy()[0]) == pytest.approx(want, rel=1e-12)
        del x, y, g, h
    assert len(tokens) >= 60 // 2     # a new name whenever the graph was compiled anew


def test_training_loop_compiles_once_and_reaches_documented_values():
    w = torch.tensor([1.0], requires_grad=True)
    b = torch.tensor([0.0], requires_grad=True)
    x, y_true = torch.tensor([2.0]), torch.tensor([4.0])
    loss_fn, optimizer = nn.MSELoss(), optim.SGD([w, b], lr=0.1)
    before = torch.compile_count()
    for i in range(100):
        loss = loss_fn(w * x + b, y_true)
        optimizer.zero_grad()
        loss.backward()
        if i == 0:
            assert (w.grad.item(), b.grad.item()) == (-8.0, -4.0)
        optimizer.step()
    assert torch.compile_count() - before <= 1
    assert repr(w) == "tensor([1.8000], requires_grad=True)"
    assert repr(b) == "tensor([0.4000], requires_grad=True)"


def test_linear_mse_sgd_momentum_match_torch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    tmodel = T.nn.Sequential(T.nn.Linear(3, 4), T.nn.Tanh(), T.nn.Linear(4, 1))
    with T.no_grad():
        for p, tp in zip(model.parameters(), tmodel.parameters()):
            tp.copy_(T.tensor(p.detach().numpy()))
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=0.01)
    topt = T.optim.SGD(tmodel.parameters(), lr=0.05, momentum=0.9, weight_decay=0.01)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 3)).astype(np.float32)
    y = rng.standard_normal((8, 1)).astype(np.float32)
    for _ in range(5):
        for o, m, crit, X, Y in ((opt, model, nn.MSELoss(), torch.tensor(x), torch.tensor(y)),
                                 (topt, tmodel, T.nn.MSELoss(), T.tensor(x), T.tensor(y))):
            o.zero_grad()
            crit(m(X), Y).backward()
            o.step()
    for p, tp in zip(model.parameters(), tmodel.parameters()):
        np.testing.assert_allclose(p.detach().numpy(), tp.detach().numpy(), rtol=1e-4, atol=1e-5)


def test_adam_matches_torch():
    p = nn.Parameter(torch.tensor([1.0, -2.0]))
    tp = T.nn.Parameter(T.tensor([1.0, -2.0]))
    opt, topt = optim.Adam([p], lr=0.1), T.optim.Adam([tp], lr=0.1)
    for _ in range(3):
        for o, q in ((opt, p), (topt, tp)):
            o.zero_grad()
            (q * q * q).sum().backward()
            o.step()
    np.testing.assert_allclose(p.detach().numpy(), tp.detach().numpy(), rtol=1e-5)


def test_backward_inputs_restricts_accumulation():
    a = torch.tensor([1.0], requires_grad=True)
    b = torch.tensor([2.0], requires_grad=True)
    (a * b).sum().backward(inputs=[a])
    assert a.grad.item() == 2.0 and b.grad is None


def test_integer_tensors_take_part_as_pytorch_promotes_them():
    for dtype, tdtype in ((torch.float64, T.float64), (torch.float32, T.float32)):
        a = torch.tensor([1.5, -2.0], dtype=dtype, requires_grad=True)
        (a * torch.tensor([3, 4]) + torch.tensor([True, False])).sum().backward()
        ta = T.tensor([1.5, -2.0], dtype=tdtype, requires_grad=True)
        (ta * T.tensor([3, 4]) + T.tensor([True, False])).sum().backward()
        np.testing.assert_array_equal(a.grad.numpy(), ta.grad.numpy())
        assert a.grad.numpy().dtype == ta.grad.numpy().dtype


def test_zero_size_tensors_have_zero_size_gradients():
    z = torch.zeros(0, 3, requires_grad=True)
    w = torch.ones(3, 2, requires_grad=True)
    ((z.sin() @ w).sum() + (z * 2).sum()).backward()
    tz, tw = T.zeros(0, 3, requires_grad=True), T.ones(3, 2, requires_grad=True)
    ((tz.sin() @ tw).sum() + (tz * 2).sum()).backward()
    assert z.grad.shape == tuple(tz.grad.shape) == (0, 3)
    np.testing.assert_array_equal(w.grad.numpy(), tw.grad.numpy())
    assert math.isnan(float(torch.zeros(0).mean().numpy()))


def test_reductions_of_inf_and_nan_give_pytorchs_values_and_warnings():
    """inf − inf, inf·0 and overflow, in elementwise operations, sums, products and a
    float32 tensor: nan and inf with no warning, as in PyTorch (numpy warned); a
    variance of too few values warns as PyTorch does."""
    def run(M):
        x = M.tensor([1.0, -2.0], dtype=M.float64, requires_grad=True)
        y = x / 0.0
        big = M.tensor([1e308, -1e308, 1e308], dtype=M.float64)
        values = [y.sum(), y.mean(), y.prod(), y.cumsum(0), y.norm(), y.logsumexp(0),
                  big.prod(), (big * 10).sum(), M.tensor([1e308, 1e308]),
                  big * 10 - big * 10, y * 0.0, -y + y,
                  y.sum(0, keepdim=True), y.var()]
        values[0].backward()
        return [v.detach().numpy() for v in values] + [x.grad.numpy()]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = run(torch)
        theirs = run(T)
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a, b)
    with pytest.warns(UserWarning, match="degrees of freedom is <= 0"):
        torch.tensor([1.0]).var()
    with pytest.warns(UserWarning, match="degrees of freedom is <= 0"):
        T.tensor([1.0]).var()


def test_division_by_zero_is_a_valid_program():
    x = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    (x / 0.0).sum().backward()
    tx = T.tensor([1.0, -2.0], dtype=T.float64, requires_grad=True)
    (tx / 0.0).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), tx.grad.numpy())
