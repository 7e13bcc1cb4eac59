"""symgrad.runtime.compile: a whole training step as one native call.

The compiled step must leave exactly what the eager runtime leaves (same operations in the
same order): parameters, gradients and optimizer state are compared bit for bit after many
steps; torch (float64 or float32, a test-only oracle) checks the eager numbers themselves.
"""
import logging

import numpy as np
import pytest

import symgrad.runtime as sg
from symgrad.runtime import TraceError
from tests.oracle import torch

OPTIMIZERS = {
    "sgd": lambda p: sg.optim.SGD(p, lr=0.1),
    "sgd-momentum": lambda p: sg.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True,
                                            weight_decay=0.01),
    "adam": lambda p: sg.optim.Adam(p, lr=0.01, weight_decay=0.1, amsgrad=True),
    "adamw": lambda p: sg.optim.AdamW(p, lr=0.01),
    "adam-maximize": lambda p: sg.optim.Adam(p, lr=0.01, maximize=True),
    "rmsprop": lambda p: sg.optim.RMSprop(p, lr=0.01, momentum=0.5, centered=True),
    "adagrad": lambda p: sg.optim.Adagrad(p, lr=0.1, lr_decay=0.01, weight_decay=0.01),
}


def linear_model(opt_name, compiled):
    """Document 003's model: y = w·x + b, MSE, zero_grad / backward / step."""
    w = sg.tensor([1.0], requires_grad=True)
    b = sg.tensor([0.0], requires_grad=True)
    opt = OPTIMIZERS[opt_name]([w, b])
    loss_fn = sg.nn.MSELoss()

    def step(x, y):
        loss = loss_fn(w * x + b, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss
    return (sg.compile(step) if compiled else step), [w, b], opt


def state_of(params, opt):
    out = [p.detach().numpy().copy() for p in params]
    out += [p.grad.numpy().copy() for p in params if p.grad is not None]
    for p in params:
        for key, value in sorted(opt.state.get(p, {}).items()):
            out.append(np.array(value))
    return out


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_linear_model_matches_eager_bit_for_bit(opt_name):
    x, y = sg.tensor([2.0, -1.0, 0.5]), sg.tensor([4.0, -1.0, 2.0])
    results = []
    for compiled in (False, True):
        step, params, opt = linear_model(opt_name, compiled)
        losses = [step(x, y).detach().numpy().copy() for _ in range(100)]
        results.append((state_of(params, opt), losses))
        if compiled:
            assert step.traces == 1
    (eager, eager_losses), (native, native_losses) = results
    assert len(eager) == len(native)
    for a, b in zip(eager, native):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert all(np.array_equal(a, b) for a, b in zip(eager_losses, native_losses))


def test_linear_model_matches_torch():
    T = torch()
    w = T.tensor([1.0], requires_grad=True)
    b = T.tensor([0.0], requires_grad=True)
    opt = T.optim.Adam([w, b], lr=0.01, weight_decay=0.1, amsgrad=True)
    x, y = T.tensor([2.0, -1.0, 0.5]), T.tensor([4.0, -1.0, 2.0])
    for _ in range(100):
        loss = T.nn.functional.mse_loss(w * x + b, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    step, (sw, sb), _ = linear_model("adam", compiled=True)
    sx, sy = sg.tensor([2.0, -1.0, 0.5]), sg.tensor([4.0, -1.0, 2.0])
    for _ in range(100):
        step(sx, sy)
    np.testing.assert_allclose(sw.detach().numpy(), w.detach().numpy(), rtol=1e-5)
    np.testing.assert_allclose(sb.detach().numpy(), b.detach().numpy(), rtol=1e-5, atol=1e-6)


def mlp(compiled, seed=0):
    sg.manual_seed(seed)
    model = sg.nn.Sequential(sg.nn.Linear(6, 8), sg.nn.Tanh(), sg.nn.Linear(8, 3),
                             sg.nn.Sigmoid())
    opt = sg.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)

    def step(x, y):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        return loss, model(x).detach()
    return (sg.compile(step) if compiled else step), model, opt


def test_mlp_with_modules_matches_eager_and_retraces_once_per_batch_size(caplog):
    rng = np.random.default_rng(1)
    batches = [(sg.tensor(rng.standard_normal((n, 6)).astype(np.float32)),
                sg.tensor(rng.uniform(size=(n, 3)).astype(np.float32)))
               for n in [16] * 10 + [5] * 10 + [16] * 10]
    out = {}
    for compiled in (False, True):
        step, model, opt = mlp(compiled)
        with caplog.at_level(logging.INFO, logger="symgrad.runtime"):
            caplog.clear()
            results = [step(x, y) for x, y in batches]
            logs = [r.getMessage() for r in caplog.records if "compile step:" in r.getMessage()]
        out[compiled] = ([p.detach().numpy().copy() for p in model.parameters()],
                         [(a.detach().numpy().copy(), b.numpy().copy()) for a, b in results])
        if compiled:
            # the first call makes SGD's momentum buffers (traced again on the next), then
            # one trace per batch size; going back to 16 re-uses the first
            assert step.traces == 2, logs
            assert any("shapes" in m for m in logs), logs
    for a, b in zip(out[False][0], out[True][0]):
        assert np.array_equal(a, b)
    for (la, pa), (lb, pb) in zip(out[False][1], out[True][1]):
        # the eager forward computes tanh and sigmoid with numpy, the compiled one with
        # the compiled code's: values handed out may differ in the last bit
        np.testing.assert_allclose(la, lb, rtol=1e-6)
        np.testing.assert_allclose(pa, pb, rtol=1e-6)


def test_manual_update_as_in_document_003():
    """``with no_grad(): w -= lr * w.grad`` and ``w.grad.zero_()``: in-place changes of
    parameters and of the gradients themselves (no zero_grad, so grads are read)."""
    def run(compiled):
        w = sg.tensor([1.0, 2.0], requires_grad=True)
        b = sg.tensor(0.5, requires_grad=True)

        def step(x, y):
            nonlocal w, b
            loss = ((w * x).sum() + b - y) ** 2
            loss.backward()
            with sg.no_grad():
                w -= 0.01 * w.grad
                b -= 0.01 * b.grad
                w.grad.zero_()
                b.grad.zero_()
            return loss
        fn = sg.compile(step) if compiled else step
        x, y = sg.tensor([2.0, 3.0]), sg.tensor(4.0)
        losses = [float(fn(x, y)) for _ in range(50)]
        return w.detach().numpy().copy(), b.detach().numpy().copy(), \
            w.grad.numpy().copy(), losses, fn
    *eager, _ = run(False)
    *native, fn = run(True)
    # first call: no .grad yet (backward sets it); then the grads exist and are read
    assert fn.traces == 2
    for a, b in zip(eager[:3], native[:3]):
        assert np.array_equal(a, b)
    assert eager[3] == native[3]


def test_gradients_accumulate_across_calls_without_zero_grad():
    def run(compiled):
        w = sg.tensor([0.5, -1.0], requires_grad=True)

        def step(x):
            (w * w * x).sum().backward()
        fn = sg.compile(step) if compiled else step
        for k in range(5):
            fn(sg.tensor([1.0, float(k)]))
        return w.grad.numpy().copy()
    assert np.array_equal(run(False), run(True))
    np.testing.assert_allclose(run(True), 2 * np.array([0.5, -1.0]) * np.array([5.0, 10.0]))


def test_learning_rate_schedule_needs_no_new_trace():
    def run(compiled):
        step, params, opt = linear_model("sgd", compiled)
        sched = sg.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5)
        x, y = sg.tensor([2.0]), sg.tensor([4.0])
        for _ in range(40):
            step(x, y)
            sched.step()
        return state_of(params, opt), step
    eager, _ = run(False)
    native, step = run(True)
    assert step.traces == 1
    assert all(np.array_equal(a, b) for a, b in zip(eager, native))


def test_python_constant_read_by_the_step_retraces(caplog):
    w = sg.tensor([1.0], requires_grad=True)
    state = {"scale": 2.0}

    @sg.compile
    def step(x):
        return w * x * state["scale"]     # a dict entry: fixed at trace, like jax.jit

    scale = 3.0

    @sg.compile
    def step2(x):
        return w * x * scale
    x = sg.tensor([1.0])
    assert float(step2(x)) == 3.0
    assert float(step2(x)) == 3.0
    scale = 5.0                            # a closure cell read by the step: a guard
    with caplog.at_level(logging.INFO, logger="symgrad.runtime"):
        assert float(step2(x)) == 5.0
    assert step2.traces == 2
    assert any("scale changed from 3.0 to 5.0" in r.getMessage() for r in caplog.records)
    assert float(step(x)) == 2.0


def test_results_keep_their_structure_and_static_arguments_retrace():
    w = sg.tensor([1.0, 2.0], requires_grad=True)

    @sg.compile
    def f(x, power, extra=None):
        y = w * x ** power
        return {"y": y, "pair": (y.sum(), power), "none": None}
    for k in range(3):
        out = f(sg.tensor([1.0, 2.0]) * (k + 1), 2)
        np.testing.assert_array_equal(out["y"].numpy(), np.array([1.0, 8.0]) * (k + 1) ** 2)
        assert out["pair"][1] == 2 and out["none"] is None
    out = f(sg.tensor([1.0, 2.0]), 3)
    np.testing.assert_array_equal(out["y"].numpy(), [1.0, 16.0])
    assert f.traces == 2


def test_index_arguments_are_inputs():
    W = sg.tensor(np.arange(12.0).reshape(4, 3), requires_grad=True)

    @sg.compile
    def pick(rows):
        return W[rows].sum(0)
    for rows in ([0, 1], [3, 3], [2, 0]):
        got = pick(sg.tensor(rows))
        np.testing.assert_array_equal(got.numpy(), np.arange(12.0).reshape(4, 3)[rows].sum(0))
    assert pick.traces == 1


def test_data_dependent_python_is_refused_naming_the_line():
    w = sg.tensor([1.0], requires_grad=True)

    @sg.compile
    def step(x):
        loss = (w * x).sum()
        if loss.item() > 0:        # the line the error names
            loss = loss * 2
        return loss
    with pytest.raises(TraceError, match=r"test_compile\.py:\d+: if loss\.item\(\) > 0"):
        step(sg.tensor([1.0]))


@pytest.mark.parametrize("body, phrase", [
    (lambda x: x * sg.randn(2), "random numbers"),
    (lambda x: x[x > 0].sum(), "boolean mask"),
    (lambda x: x * (x.argmax() + 1), "reads values in Python"),
    (lambda x: x.double() * 2, "cast between float types"),
])
def test_what_cannot_be_compiled_raises_clearly(body, phrase):
    step = sg.compile(body)
    with pytest.raises(TraceError, match=phrase):
        step(sg.tensor([1.0, -2.0]))


def test_in_place_change_of_a_view_is_refused():
    w = sg.tensor([1.0, 2.0])

    @sg.compile
    def step(x):
        w[:1].add_(x)
        return w
    with pytest.raises(TraceError, match="changes a view"):
        step(sg.tensor([1.0]))


def test_numpy_arguments_are_refused():
    with pytest.raises(TypeError, match="torch.from_numpy"):
        sg.compile(lambda x: x * 2)(np.ones(2))


def test_after_max_traces_it_runs_eagerly(caplog):
    w = sg.tensor([1.0], requires_grad=True)
    f = sg.compile(lambda x, k: w * x * k)
    with caplog.at_level(logging.WARNING, logger="symgrad.runtime"):
        for k in range(12):
            assert float(f(sg.tensor([1.0]), k)) == float(k)
    assert f.traces == 8
    assert any("running eagerly" in r.getMessage() for r in caplog.records)


def test_decorator_with_options_and_nested_compiled_functions():
    w = sg.tensor([3.0], requires_grad=True)

    @sg.compile(fullgraph=True)
    def inner(x):
        return w * x

    @sg.compile
    def outer(x):
        return inner(x) + 1
    for v in (1.0, 2.0):
        assert float(outer(sg.tensor([v]))) == 3.0 * v + 1
    assert outer.traces == 1 and inner.traces == 0
    with pytest.raises(TypeError, match="unexpected keyword"):
        sg.compile(lambda x: x, nonsense=1)


def test_every_guard_of_the_generated_call_retraces_and_stays_exact(caplog):
    # the per-trace generated call checks each guard itself; a change of each kind must
    # leave it (a new trace, named in the log) and the results must still equal eager's
    x, y = sg.tensor([2.0, -1.0, 0.5]), sg.tensor([4.0, -1.0, 2.0])
    runs = []
    for compiled in (False, True):
        step, params, opt = linear_model("sgd", compiled)
        w, b = params
        losses = []
        with caplog.at_level(logging.INFO, logger="symgrad.runtime"):
            for k in range(40):
                if k == 10:                       # the optimizer's code path
                    opt.param_groups[0]["momentum"] = 0.5
                if k == 20:                       # requires_grad of a parameter
                    b.requires_grad_(False)
                if k == 30:                       # and back: the first trace's guards hold
                    opt.param_groups[0]["momentum"] = 0.0
                    b.requires_grad_(True)
                losses.append(step(x, y).detach().numpy().copy())
        runs.append((state_of(params, opt), losses))
        if compiled:
            reasons = [r.getMessage() for r in caplog.records if "trace" in r.getMessage()]
            assert any("code path" in m for m in reasons), reasons
            assert any("changed shape, dtype or requires_grad" in m for m in reasons), reasons
            assert step.traces == 4       # momentum buffers are made by a traced call
    (eager, eager_losses), (native, native_losses) = runs
    for a, c in zip(eager, native):
        assert np.array_equal(a, c)
    assert all(np.array_equal(a, c) for a, c in zip(eager_losses, native_losses))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_classification_with_cross_entropy_compiles_with_labels_per_call(reduction):
    # cross_entropy's class indices and weights are data computed from the labels in
    # Python: the compiled step recomputes them before each call (no new trace per batch)
    rng = np.random.default_rng(3)
    x = sg.tensor(rng.standard_normal((16, 5)).astype(np.float32))
    labels = [sg.tensor(rng.integers(0, 3, 16)) for _ in range(25)]
    runs = []
    for compiled in (False, True):
        sg.manual_seed(0)
        model = sg.nn.Sequential(sg.nn.Linear(5, 8), sg.nn.Tanh(), sg.nn.Linear(8, 3))
        opt = sg.optim.Adam(model.parameters(), lr=0.01)
        loss_fn = sg.nn.CrossEntropyLoss(weight=sg.tensor([1.0, 2.0, 0.5]), ignore_index=1,
                                         reduction=reduction,
                                         label_smoothing=0.1 if reduction == "mean" else 0.0)

        def step(x, y):
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            (loss.sum() if reduction == "none" else loss).backward()
            opt.step()
            return loss
        step = sg.compile(step) if compiled else step
        losses = [step(x, y).detach().numpy().copy() for y in labels]
        if compiled:
            assert step.traces == 1
            steps = [s["step"] for s in opt.state.values()]
            with pytest.raises(IndexError, match="Target 3 is out of bounds for 3 classes"):
                step(x, sg.tensor(np.full(16, 3)))
            assert [s["step"] for s in opt.state.values()] == steps    # nothing ran
        runs.append(([p.detach().numpy().copy() for p in model.parameters()], losses))
    (eager, eager_losses), (native, native_losses) = runs
    assert all(np.array_equal(a, b) for a, b in zip(eager, native))
    for a, b in zip(eager_losses, native_losses):     # numpy's exp/log vs libmvec's
        np.testing.assert_allclose(a, b, rtol=2e-6)


def test_class_indices_computed_inside_the_step_are_refused_clearly():
    model = sg.nn.Linear(4, 2)
    x = sg.tensor(np.ones((3, 4), np.float32))

    @sg.compile
    def step(x):
        loss = sg.nn.functional.cross_entropy(model(x), model(x).argmax(1))
        loss.backward()
        return loss
    with pytest.raises(TraceError, match="test_compile.py"):
        step(x)


def test_a_compiled_step_moves_to_the_optimised_second_tier(monkeypatch):
    """A step whose program compiles in straight-line parts runs first from the quick
    compile; when the optimised second tier is in, the step is told and calls it, with
    the same bits (and eager's numbers to the last bits: eager sin is numpy's)."""
    from symgrad.compiler import lower, pipeline
    monkeypatch.setattr(pipeline, "LARGE_PROGRAM", 1)
    monkeypatch.setattr(lower, "PART_MEMBERS", 50)

    def chain(x):
        h = x
        for _ in range(100):
            h = (h * h + 0.5).sin()
        return h
    step, x = sg.compile(chain), sg.tensor(0.3, dtype=sg.float64)
    step(x)                             # traced (eager), then compiled
    first = step(x).item()
    (c,) = [c for cs in step.entries.values() for c in cs]
    quick = c.direct[0]
    assert c.fn.wait_optimized(120)
    assert c.direct[0] is not quick
    assert step(x).item() == first
    assert abs(first - chain(x).item()) < 1e-14


def test_parameters_read_element_by_element_train_as_eager_bit_for_bit():
    """A parameter read as w[0], w[1], w[2] between whole-tensor uses: the compiled
    backward joins the element adjoints only where eager adds them in a row, so every
    gradient element is added up in eager's order."""
    def model(compiled):
        w = sg.tensor([0.7, -1.3, 0.4, 2.1], dtype=sg.float64, requires_grad=True)
        opt = sg.optim.SGD([w], lr=1e-3, momentum=0.5)

        def step(x):
            y = (w * x).sum() * w[0] + w[1] * w[2] * x[0] + (w * w).sum() * w[3] \
                + w[2] * x[1] + w[0] * w[3]
            loss = (y - 1.0) ** 2
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss
        return (sg.compile(step) if compiled else step), w
    x = sg.tensor([0.3, -0.8, 1.1, 0.05], dtype=sg.float64)
    results = []
    for compiled in (False, True):
        step, w = model(compiled)
        losses = [step(x).item() for _ in range(50)]
        assert np.isfinite(losses).all() and losses[-1] < 0.5 * losses[0]
        results.append((w.detach().numpy().copy(), losses))
    (we, le), (wc, lc) = results
    assert np.array_equal(we, wc) and le == lc
