"""The PyTorch surface of symgrad.runtime, each piece written once and run on both."""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import symgrad.runtime as sg  # noqa: E402


def _same(a, b, rtol=0, atol=0):
    a = a.detach().numpy() if hasattr(a, "detach") else np.asarray(a)
    b = b.detach().numpy() if hasattr(b, "detach") else np.asarray(b)
    assert a.shape == b.shape
    np.testing.assert_allclose(b, a, rtol=rtol, atol=atol)


@pytest.mark.parametrize("draw", [
    lambda M: M.rand(7), lambda M: M.rand(3, dtype=M.float64), lambda M: M.randn(5),
    lambda M: M.randn(40, dtype=M.float64), lambda M: M.randint(0, 10, (9,)),
    lambda M: M.randperm(12), lambda M: M.randn(size=()),
    lambda M: M.empty(6).uniform_(-0.5, 0.5), lambda M: M.zeros(4, dtype=M.float64).normal_(1, 2),
    lambda M: M.normal(M.zeros(3, dtype=M.float64), M.ones(3, dtype=M.float64)),
], ids=["rand", "rand64", "randn", "randn40_64", "randint", "randperm", "randn0d", "uniform_",
        "normal_", "normal"])
def test_random_streams_are_pytorchs_bit_for_bit(draw):
    torch.manual_seed(7)
    sg.manual_seed(7)
    for _ in range(2):          # and they stay in step
        _same(draw(torch), draw(sg))


def test_randn_of_16_or_more_float32_is_within_a_few_ulps():
    # PyTorch's vectorised float32 Box–Muller uses its own log/sin/cos polynomials
    torch.manual_seed(1)
    sg.manual_seed(1)
    _same(torch.randn(100), sg.randn(100), rtol=2e-5, atol=2e-6)


def test_factories_and_linear_initialisation_match():
    torch.manual_seed(0)
    sg.manual_seed(0)
    # linspace: PyTorch's vectorised kernel steps from block starts; within an ulp
    _same(torch.linspace(-math.pi, math.pi, 2000), sg.linspace(-math.pi, math.pi, 2000),
          atol=4e-7)
    _same(torch.linspace(0, 1, 5, dtype=torch.float64), sg.linspace(0, 1, 5, dtype=sg.float64))
    _same(torch.arange(0, 1, 0.1), sg.arange(0, 1, 0.1))
    _same(torch.eye(3, 4), sg.eye(3, 4))
    t, s = torch.nn.Linear(5, 3), sg.nn.Linear(5, 3)
    _same(t.weight, s.weight)
    _same(t.bias, s.bias)
    _same(torch.full((2,), 3), sg.full((2,), 3))
    assert sg.full((2,), 3).dtype == np.int64 and sg.tensor([True]).dtype == np.bool_


def test_dataloader_shuffles_as_pytorch():
    x = np.arange(10.0)
    for M in (torch, sg):
        M.manual_seed(5)
    batches = [[b[0].tolist() for b in M.utils.data.DataLoader(
        M.utils.data.TensorDataset(M.tensor(x)), batch_size=4, shuffle=True)]
        for M in (torch, sg)]
    assert batches[0] == batches[1]


@pytest.mark.parametrize("name", ["SGD", "SGD_nesterov", "Adam", "AdamW", "RMSprop",
                                  "Adagrad", "groups_and_frozen"])
def test_optimizers_follow_pytorch(name):
    def run(M):
        M.manual_seed(0)
        model = M.nn.Sequential(M.nn.Linear(3, 4), M.nn.Tanh(), M.nn.Linear(4, 1)).double()
        frozen = M.nn.Linear(3, 1).double().requires_grad_(False)
        x = M.randn(8, 3, dtype=M.float64)
        params = list(model.parameters())
        make = {
            "SGD": lambda: M.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=0.01),
            "SGD_nesterov": lambda: M.optim.SGD(params, lr=0.1, momentum=0.9,
                                                nesterov=True),
            "Adam": lambda: M.optim.Adam(params, lr=0.01, weight_decay=0.1, amsgrad=True),
            "AdamW": lambda: M.optim.AdamW(params, lr=0.01),
            "RMSprop": lambda: M.optim.RMSprop(params, lr=0.01, momentum=0.5, centered=True),
            "Adagrad": lambda: M.optim.Adagrad(params, lr=0.1, lr_decay=0.01),
            "groups_and_frozen": lambda: M.optim.SGD(
                [{"params": params[:2], "lr": 0.05}, {"params": params[2:]},
                 {"params": frozen.parameters()}], lr=0.1, momentum=0.5),
        }[name]
        opt = make()
        for _ in range(5):
            opt.zero_grad()
            loss = (model(x) ** 2).mean() + (frozen(x) ** 2).mean()
            loss.backward()
            opt.step()
        return [p.detach() for p in model.parameters()]
    for a, b in zip(run(torch), run(sg)):
        _same(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("loss", [
    lambda M, x, t, y: M.nn.functional.cross_entropy(x, t),
    lambda M, x, t, y: M.nn.CrossEntropyLoss(label_smoothing=0.1)(x, t),
    lambda M, x, t, y: M.nn.CrossEntropyLoss(weight=M.tensor([1.0, 2.0, 0.5],
                                                              dtype=M.float64))(x, t),
    lambda M, x, t, y: M.nn.NLLLoss(reduction="sum")(x.log_softmax(1), t),
    lambda M, x, t, y: M.nn.BCEWithLogitsLoss()(x, y),
    lambda M, x, t, y: M.nn.BCELoss()(x.sigmoid(), y),
    lambda M, x, t, y: M.nn.SmoothL1Loss(beta=0.5)(x, y),
    lambda M, x, t, y: M.nn.HuberLoss(delta=0.7)(x, y),
    lambda M, x, t, y: M.nn.L1Loss()(x, y),
    lambda M, x, t, y: M.nn.functional.leaky_relu(x, 0.2).sum(),
    lambda M, x, t, y: M.nn.functional.softplus(x * 10, beta=2).sum(),
    lambda M, x, t, y: M.nn.functional.elu(x).sum() + M.nn.functional.gelu(x).sum(),
    lambda M, x, t, y: (x.var(1) + x.std(0, unbiased=False).sum()).sum(),
    lambda M, x, t, y: x.max(1).values.sum() + x.logsumexp(1).sum() + x.norm(),
], ids=["cross_entropy", "label_smoothing", "class_weight", "nll_sum", "bce_logits", "bce",
        "smooth_l1", "huber", "l1", "leaky_relu", "softplus", "elu_gelu", "var_std",
        "max_logsumexp_norm"])
def test_losses_and_activations_match_pytorch(loss):
    rng = np.random.default_rng(0)
    xv, yv = rng.standard_normal((6, 3)), rng.random((6, 3))
    labels = np.array([0, 2, 1, 1, 0, 2])
    out = []
    for M in (torch, sg):
        x = M.tensor(xv, requires_grad=True)
        value = loss(M, x, M.tensor(labels), M.tensor(yv))
        value.backward()
        out.append((value.detach(), x.grad))
    _same(out[0][0], out[1][0], rtol=1e-12, atol=1e-14)
    _same(out[0][1], out[1][1], rtol=1e-10, atol=1e-12)


def test_new_labels_and_masks_do_not_recompile():
    w = sg.randn(4, 3, dtype=sg.float64, requires_grad=True)
    before = None
    for step in range(6):
        x = sg.randn(8, 4, dtype=sg.float64)
        labels = sg.randint(0, 3, (8,))
        logits = x @ w
        loss = sg.nn.functional.cross_entropy(logits, labels) + \
            sg.where(logits > 0, logits, 0.0).sum() + logits[sg.arange(8), labels].sum()
        loss.backward()
        if step == 0:
            before = sg.compile_count()
    assert sg.compile_count() == before


def test_save_and_load_are_numpy_archives(tmp_path):
    model = sg.nn.Sequential(sg.nn.Linear(2, 3), sg.nn.ReLU(), sg.nn.Linear(3, 1))
    sg.save({"model": model.state_dict(), "epoch": 3, "note": "x", "xs": [1.5, None]},
            tmp_path / "ckpt.pt")
    loaded = sg.load(tmp_path / "ckpt.pt")
    assert loaded["epoch"] == 3 and loaded["note"] == "x" and loaded["xs"] == [1.5, None]
    clone = sg.nn.Sequential(sg.nn.Linear(2, 3), sg.nn.ReLU(), sg.nn.Linear(3, 1))
    clone.load_state_dict(loaded["model"])
    x = sg.randn(4, 2)
    assert clone(x).equal(model(x))
    with pytest.raises(TypeError, match="no pickled objects"):
        sg.save(model, tmp_path / "model.pt")
    (tmp_path / "bad.pt").write_bytes(b"\x80\x04not a zip")
    with pytest.raises(RuntimeError, match="not a file written by symgrad"):
        sg.load(tmp_path / "bad.pt")


def test_devices_are_the_cpu_or_a_clear_error():
    assert not sg.cuda.is_available()
    x = sg.ones(2, device="cpu").to("cpu").cpu()
    assert str(x.device) == "cpu" and sg.device("cpu") == "cpu"
    with pytest.raises(RuntimeError, match="runs on the CPU"):
        sg.ones(2, device="cuda")
    with pytest.raises(RuntimeError, match="runs on the CPU"):
        x.to("cuda:0")


def test_custom_function_splits_the_compiled_backward():
    class Cube(sg.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x ** 3

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return grad * 3 * x ** 2

    a = sg.tensor([0.5, -2.0, 1.5], dtype=sg.float64, requires_grad=True)
    y = (Cube.apply(a.sin() * 2) * a).sum()
    y.backward()
    ta = torch.tensor([0.5, -2.0, 1.5], dtype=torch.float64, requires_grad=True)
    ((ta.sin() * 2) ** 3 * ta).sum().backward()
    _same(ta.grad, a.grad, rtol=1e-12)


def test_unsupported_features_say_so():
    with pytest.raises(NotImplementedError, match="worker processes"):
        sg.utils.data.DataLoader([1, 2], num_workers=2)
    v = sg.zeros(3, requires_grad=True) * 1
    with pytest.raises(NotImplementedError, match="view"):
        v[1:].add_(sg.ones(2, requires_grad=True))
    with sg.no_grad(), pytest.raises(NotImplementedError, match="grad_fn in place"):
        v[0] = 5.0          # its backward would recompute the old value: refused
