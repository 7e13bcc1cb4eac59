"""In-place operations and version counters, differentially against PyTorch.

Each program runs once on ``torch`` and once on ``symgrad.runtime``, written the same
way.  Both must end alike: the same values and gradients, or the same exception class
raised at the same statement (``step`` counts the statements reached) with PyTorch's
phrase in the message.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import symgrad.runtime as sg  # noqa: E402


def _leaf(M, values, grad=True):
    return M.tensor(values, dtype=M.float64, requires_grad=grad)


def sgd_update_in_place(M, log):
    w = _leaf(M, [1.0, -2.0, 3.0])
    model = [w]                       # the optimizer's reference must see the update
    loss = (w * w).sum()
    loss.backward()
    log()
    with M.no_grad():
        w -= 0.1 * w.grad
    log()
    return model[0], w.requires_grad, w.is_leaf, w.grad


def leaf_in_place_raises(M, log):
    w = _leaf(M, [1.0, 2.0])
    log()
    w += 1


def saved_input_changed(M, log):
    a = _leaf(M, [1.0, 2.0])
    b = M.tensor([3.0, 4.0], dtype=M.float64)
    y = a * b                         # mul saves b (a requires grad)
    b.add_(1)
    log()
    y.sum().backward()


def unsaved_input_changed(M, log):
    a = _leaf(M, [1.0, 2.0])
    b = M.tensor([3.0, 4.0], dtype=M.float64)
    y = (a + b).exp()                 # add saves nothing; exp saves its result
    b.add_(1)
    log()
    y.sum().backward()
    return a.grad, b


def saved_output_changed(M, log):
    a = _leaf(M, [0.5, -1.0])
    y = a.sigmoid()                   # sigmoid saves its result
    y.mul_(2)
    log()
    y.sum().backward()


def recorded_in_place_chain(M, log):
    a = _leaf(M, [0.5, -1.0, 2.0])
    y = a * 2
    z = y * 3                         # recorded before y changes: reads the old y
    y.cos_()
    y += a
    log()
    (z + y * y).sum().backward()
    return a.grad, y, z, y.grad_fn is not None


def setitem_with_grad(M, log):
    w = _leaf(M, [1.0, 2.0, 3.0])
    x = M.zeros(4, dtype=M.float64)
    x[1:] = w * w
    x[0] = w[2]
    log()
    (x * M.tensor([1.0, 2.0, 3.0, 4.0], dtype=M.float64)).sum().backward()
    return x, w.grad


def setitem_on_leaf_raises(M, log):
    w = _leaf(M, [1.0, 2.0])
    log()
    w[0] = 5.0


def setitem_under_no_grad(M, log):
    w = _leaf(M, [1.0, 2.0, 3.0])
    with M.no_grad():
        w[0] = 10.0
        w[1:] *= 2
    log()
    (w ** 2).sum().backward()
    return w, w.grad, w._version


def view_shares_memory(M, log):
    x = M.zeros(2, 3, dtype=M.float64)
    row = x[0]
    row.add_(1)
    col = x[:, 1]
    col.mul_(5)
    x.t()[2].fill_(7.0)
    return x, x._version, row._version


def version_counts(M, log):
    x = M.ones(3, dtype=M.float64)
    x.add_(1)
    x.mul_(2)
    x.zero_()
    x[0] = 3.0
    d = x.detach()
    d.add_(1)
    return x, x._version, d._version


def in_place_dtype_error(M, log):
    x = M.tensor([1, 2, 3])
    log()
    x += 0.5


def in_place_shape_error(M, log):
    x = M.zeros(3, dtype=M.float64)
    log()
    x.add_(M.ones(2, 3, dtype=M.float64))


def comparisons_are_elementwise(M, log):
    a = M.tensor([1.0, 2.0, 3.0])
    b = M.tensor([1.0, 0.0, 3.0])
    return (a == b), (a != b), (a < b), (a >= 2), (a == b).sum(), ((a > 1) & (b > 0)), \
        (~(a > 1)), a.equal(b)


def promotion_as_pytorch(M, log):
    f32 = M.tensor([1.5, 2.0])
    i64 = M.tensor([2, 3])
    f64_0d = M.tensor(2.0, dtype=M.float64)
    return (f32 ** i64), (i64 + 2.5), (i64 * 2), (i64 / 2), (f32 + f64_0d), \
        (i64 + f64_0d), M.tensor([True, False, True]).sum(), (i64 // 2), (i64 % 2)


def grad_zero_in_place(M, log):
    w = _leaf(M, [1.0, 2.0])
    (w * 3).sum().backward()
    g = w.grad
    w.grad.zero_()
    (w * w).sum().backward()
    return w.grad, g                  # .grad is accumulated into the same tensor


PROGRAMS = [sgd_update_in_place, leaf_in_place_raises, saved_input_changed,
            unsaved_input_changed, saved_output_changed, recorded_in_place_chain,
            setitem_with_grad, setitem_on_leaf_raises, setitem_under_no_grad,
            view_shares_memory, version_counts, in_place_dtype_error, in_place_shape_error,
            comparisons_are_elementwise, promotion_as_pytorch, grad_zero_in_place]

PHRASES = {RuntimeError: ["a leaf Variable that requires grad is being used in an in-place",
                          "modified by an inplace operation", "can't be cast to the desired "
                          "output type", "doesn't match the broadcast shape"]}


def _run(program, M):
    steps = []
    try:
        return "ok", program(M, lambda: steps.append(1)), len(steps)
    except Exception as err:        # noqa: BLE001 - the class is what is compared
        return "raised", err, len(steps)


def _plain(v):
    if hasattr(v, "detach"):
        return v.detach().numpy(), str(v.dtype).replace("torch.", "")
    return v


@pytest.mark.parametrize("program", PROGRAMS, ids=lambda p: p.__name__)
def test_same_outcome_as_pytorch(program):
    t_kind, t_out, t_steps = _run(program, torch)
    s_kind, s_out, s_steps = _run(program, sg)
    assert (s_kind, s_steps) == (t_kind, t_steps), (t_out, s_out)
    if t_kind == "raised":
        assert type(s_out) is type(t_out), (t_out, s_out)
        phrase = [p for p in PHRASES.get(type(t_out), []) if p in str(t_out)]
        assert phrase and phrase[0] in str(s_out), (t_out, s_out)
        return
    t_vals = t_out if isinstance(t_out, tuple) else (t_out,)
    s_vals = s_out if isinstance(s_out, tuple) else (s_out,)
    for a, b in zip(t_vals, s_vals, strict=True):
        a, b = _plain(a), _plain(b)
        if isinstance(a, tuple):
            np.testing.assert_allclose(b[0], a[0], rtol=1e-12, atol=0)
            assert b[1] == a[1]
        else:
            assert a == b


def test_version_counter_is_shared_with_views_and_detach_but_not_data():
    x = sg.ones(3)
    v, d, data = x[1:], x.detach(), x.data
    v.add_(1)
    assert x._version == d._version == v._version == 1 and data._version == 0
    data.add_(1)            # .data changes are invisible to autograd's checks, as in PyTorch
    assert x._version == 1 and x.tolist() == [2.0, 3.0, 3.0]
