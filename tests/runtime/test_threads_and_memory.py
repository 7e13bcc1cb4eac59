"""Threads (calls, compiles, grad mode) and memory that does not grow with use."""
import gc
import threading
import tracemalloc

import numpy as np

import symgrad.runtime as rt
from symgrad.compiler import Graph, exp, sin, wait_optimized


def run_threads(target, n=4):
    errors, threads = [], []

    def wrapped(k):
        try:
            target(k)
        except BaseException as err:  # reported below, with the thread's number
            errors.append((k, err))
    for k in range(n):
        threads.append(threading.Thread(target=wrapped, args=(k,)))
        threads[-1].start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors


def test_one_function_called_from_four_threads_at_once():
    for n in (3, 200_000):      # small: the GIL is held; large: released around the kernel
        g = Graph()
        x = g.input("x", (n,))
        f = g.compile([(sin(x) * exp(x)).sum()], [x])

        def work(k):
            xs = np.linspace(-1, 1, n) * (k + 1) / 4
            for _ in range(20):
                value, (dx,) = f.vjp(xs)
                np.testing.assert_allclose(value, np.sum(np.sin(xs) * np.exp(xs)), rtol=1e-9)
                np.testing.assert_allclose(dx, (np.cos(xs) + np.sin(xs)) * np.exp(xs), rtol=1e-9)
        run_threads(work)


def test_compiles_from_several_threads_at_once():
    def work(k):
        for j in range(5):
            g = Graph()
            x = g.input("x", (4,))
            c = 1.0 + k + j / 10
            f = g.compile([(x * x * c).sum()], [x])
            np.testing.assert_allclose(f.vjp(np.arange(4.0))[1][0], 2 * c * np.arange(4.0))
    run_threads(work)


def test_grad_mode_is_per_thread():
    inside = threading.Event()
    release = threading.Event()
    seen = {}

    def no_grad_thread(_):
        with rt.no_grad():
            inside.set()
            release.wait(10)
            seen["no_grad"] = rt.is_grad_enabled()

    t = threading.Thread(target=no_grad_thread, args=(0,))
    t.start()
    inside.wait(10)
    x = rt.tensor([1.0], requires_grad=True)
    seen["main"] = (x * 2).requires_grad     # this thread still records
    release.set()
    t.join()
    assert seen == {"no_grad": False, "main": True}


def test_training_loop_memory_does_not_grow_per_step():
    w = rt.tensor([1.0], requires_grad=True)
    b = rt.tensor([0.0], requires_grad=True)
    x, y = rt.tensor([2.0]), rt.tensor([4.0])
    opt, loss_fn = rt.optim.SGD([w, b], lr=0.01), rt.nn.MSELoss()

    def steps(n):
        for _ in range(n):
            loss = loss_fn(w * x + b, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    steps(200)
    wait_optimized()    # (earlier tests' second tiers, compiling in the background, allocate)
    gc.collect()
    tracemalloc.start()
    steps(200)
    gc.collect()     # count what is kept, not cycles waiting for the collector
    first = tracemalloc.get_traced_memory()[0]
    steps(2000)
    gc.collect()
    second = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert second - first < 16 * 1024, f"grew {second - first} bytes over 2000 steps"


def test_runtime_cache_of_compiled_backwards_is_bounded(monkeypatch):
    from symgrad.runtime import autograd
    monkeypatch.setattr(autograd, "CACHE_SIZE", 8)
    for k in range(20):
        x = rt.tensor([1.0] * (k + 1), requires_grad=True)
        (x * 3).sum().backward()
    assert len(autograd._cache) <= 8


def test_functions_of_one_signature_share_their_fast_call_glue():
    from symgrad.compiler.backend import fastcall

    def make(k, n=5):
        g = Graph()
        x = g.input("x", (n,))
        return g.compile([(exp(x) * (k + 1.5)).sum()], [x])
    first = make(0)
    glues = set(fastcall._glues)
    functions = [first] + [make(k) for k in range(1, 6)]
    assert set(fastcall._glues) == glues           # same shapes: no new glue compiled
    x = np.linspace(-1.0, 1.0, 5)
    for k in (3, 0, 5, 1):                         # each builtin calls its own kernel
        value, (grad,) = functions[k].vjp(x)
        assert np.isclose(value, np.exp(x).sum() * (k + 1.5), rtol=1e-13)
        np.testing.assert_allclose(grad, np.exp(x) * (k + 1.5), rtol=1e-13)
    assert functions[2]._fast["vjp"][0] is not functions[4]._fast["vjp"][0]
    other = make(0, n=6)                           # another shape: glue of its own
    assert len(set(fastcall._glues) - glues) == 1
    assert np.isclose(other.vjp(np.zeros(6))[0], 6 * 1.5)


def test_the_same_backward_from_four_threads_compiles_once():
    import symgrad.runtime as rt
    barrier = threading.Barrier(4)
    errors = []
    before = rt.compile_count()

    def work(k):
        try:
            w = rt.tensor([0.5, 1.5, -2.0], dtype=rt.float64, requires_grad=True)
            barrier.wait()
            (w.sin() * w.exp() * 1.2345).sum().backward()
            assert np.allclose(w.grad.numpy(), (np.cos(w.detach().numpy()) +
                                                np.sin(w.detach().numpy()))
                               * np.exp(w.detach().numpy()) * 1.2345)
        except Exception as err:    # noqa: BLE001 - reported below
            errors.append(err)
    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert rt.compile_count() == before + 1
