"""Indexing, where, clamp, joins and scans in symgrad.runtime: values and gradients as
PyTorch's, the program written once for both."""
import numpy as np
import pytest

import symgrad.runtime as rt
from tests.oracle import torch

PROGRAMS = {
    "slices": lambda T, a: (a[1:, ::2] * a[0, None, :3]).sum(),
    "where": lambda T, a: T.where(a > 0, a * a, T.sin(a)).sum(),
    "cat": lambda T, a: (T.cat([a, a[:1] * 3], 0).sum(0) ** 2).sum(),
    "stack_prod": lambda T, a: T.stack([a[0], a[1]], 1).prod(1).sum(),
    "gather": lambda T, a: (a.gather(1, T.tensor([[0, 0], [4, 1], [2, 2], [3, 0]])) ** 2).sum(),
    "mask": lambda T, a: a[a > 0.5].sum() * a[a < 0].prod(),
    "index_tensor": lambda T, a: a[T.tensor([0, 2, 2]), 1:3].exp().sum(),
    "clamp_cumsum": lambda T, a: (a.clamp(-0.5, 0.5).cumsum(1) * a).sum(),
    "clamp_min": lambda T, a: (a.clamp(min=0.1) * a).sum(),
    "unsqueeze_flip": lambda T, a: a.unsqueeze(0).flip(2).squeeze(0)[0].sum() * a[3, 4],
    "atan2": lambda T, a: T.atan2(a, a + 2).sum(),
}


@pytest.mark.parametrize("name", PROGRAMS)
def test_same_values_and_gradients_as_pytorch(name):
    program = PROGRAMS[name]
    data = np.random.default_rng(3).standard_normal((4, 5))
    mine = rt.tensor(data, requires_grad=True)
    theirs = torch().tensor(data, requires_grad=True)
    out, expect = program(rt, mine), program(torch(), theirs)
    out.backward()
    expect.backward()
    assert mine.dtype == np.float64                    # a float64 array stays float64
    np.testing.assert_allclose(out.item(), expect.item(), rtol=1e-13)
    np.testing.assert_allclose(mine.grad.numpy(), theirs.grad.numpy(), rtol=1e-12, atol=1e-14)


def test_negative_steps_are_refused_as_in_pytorch():
    x = rt.tensor([1.0, 2.0, 3.0], requires_grad=True)
    with pytest.raises(ValueError, match="step must be greater than zero"):
        x[::-1]
    assert x[1].grad_fn.name == "SelectBackward0" and x[1:].grad_fn.name == "SliceBackward0"
