"""Every example script runs and prints the values of shared/EXAMPLES.md."""
import subprocess
import sys

import pytest

from symgrad.examples import EXAMPLES
from symgrad.runtime.cli import main


def run(key):
    out = subprocess.run([sys.executable, "-m", "symgrad.runtime.cli", "examples", "run", key],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_000():
    out = run("000")
    assert "x.grad = tensor([5., 1., 7.])" in out and "y.grad = tensor([0., 2., 8.])" in out
    assert "∂z/∂x = diag(y)" in out and "[[5. 0. 0.]" in out


def test_001():
    out = run("001")
    for line in ["tensor([[27., 27.],", "tensor(27., grad_fn=<MeanBackward0>)",
                 "tensor([[4.5000, 4.5000],", "tensor([[5.5000, 5.5000],",
                 "tensor([[2., 4.],", "grad_fn=<ViewBackward0>",
                 "tensor([2.0000, 0.2000, 0.0200, 0.0020])",
                 "tensor(1., grad_fn=<PowBackward0>) True",
                 "tensor(1.) False", "tensor(2., grad_fn=<AddBackward0>) True", "True False"]:
        assert line in out, line
    assert out.rstrip().endswith("tensor(2.)")


def test_002():
    out = run("002")
    for line in ["J_{2→4} = u3 = 5", "J_{3→4} = u2 = 3", "P4 = seed = 1", "P3 = P4·J_{3→4}",
                 "= 8", "P1 = P3·J_{1→3} = P3·(1) = 3", "runtime agrees: True True"]:
        assert line in out, line


def test_003():
    out = run("003")
    assert "first step: dw = tensor([-8.])  db = tensor([-4.])" in out
    assert "w =  tensor([1.8000], requires_grad=True)" in out
    assert "b =  tensor([0.4000], requires_grad=True)" in out
    assert "compiles for 100 steps: 1" in out
    assert out.count("dW matches formula: True") == 2 and "the loss falls: True" in out


def test_004():
    out = run("004")
    assert ": True" in out
    assert "tensor([[1., 1.],\n        [1., 1.]]) tensor([[-1., -1.],\n        [-1., -1.]])" in out
    assert "Mismatch in shape" in out and "(2, 2)" in out
    assert "tensor([[ 5.,  5.],\n        [11., 11.]]) tensor([[6., 8.],\n        [6., 8.]])" in out


def test_cli_lists_examples(capsys):
    assert main(["examples", "list"]) == 0
    out = capsys.readouterr().out
    assert all(k in out for k in EXAMPLES)


def test_cli_jacobian_of_002(capsys):
    assert main(["jacobian", "u3 = u1 + u2; u4 = u2*u3", "--at", "u1=2,u2=3"]) == 0
    out = capsys.readouterr().out
    for line in ["u3 = u1 + u2 = 5\n", "u4 = u2·u3 = 15\n", "J_{2→4} = u3 = 5\n",
                 "J_{3→4} = u2 = 3\n", "J_{1→3} = 1\n", "P4 = seed = 1\n",
                 "P3 = P4·J_{3→4} = P4·(u2) = 3\n", "P1 = P3·J_{1→3} = P3 = 3\n",
                 "P2 = P4·J_{2→4} + P3·J_{2→3} = P4·(u3) + P3 = 8\n"]:
        assert line in out


def test_cli_json(capsys):
    import json
    assert main(["jacobian", "z = x*y", "--shape", "x=3", "--shape", "y=3",
                 "--at", "x=[0,2,8],y=[5,1,7]", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    values = {tuple(e["edge"]): e["value"] for e in data["edges"]}
    assert values[("x", "z")] == [5, 1, 7] and values[("y", "z")] == [0, 2, 8]


@pytest.mark.parametrize("argv, words", [
    (["jacobian", "u3 = u1 + * u2"], ["statement 1", "cannot parse"]),
    (["jacobian", "u3 = u1 + u2", "--at", "u1=2"], ["missing", "u2"]),
    (["jacobian", "u3 = u1 + u2", "--at", "q=1,u1=1,u2=2"], ["q", "not inputs"]),
    (["examples", "run", "999"], ["no example"]),
])
def test_cli_errors_are_one_line_exit_2(argv, words, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(w in err for w in words)


@pytest.mark.parametrize("key, lines", [
    ("rosenbrock", ["gradient agrees with the closed form: True", "at the minimum x = 1: 0.0 0.0",
                    "f(x0) = 889137.3933  (numpy: 889137.3933)"]),
    ("logsumexp", ["logsumexp(400·z) = 720.018149928   (expected 720.018149928)",
                   "gradient = 400·softmax: True", "the naive formula overflows: inf"]),
    ("cross_entropy", ["gradient = (softmax − onehot)/N: True", "index 4 is out of bounds"]),
    ("lj", ["499500 pairs", "agrees: True True"]),
    ("piecewise", ["agrees: True True", "f' = [-3. "]),
])
def test_problems_with_the_new_operators(key, lines):
    out = run(key)
    assert "False" not in out
    for line in lines:
        assert line in out, line
