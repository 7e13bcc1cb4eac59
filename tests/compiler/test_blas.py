"""Which BLAS matmul calls: numpy's OpenBLAS, or a private copy with its AVX-512 kernels.

Run in child processes: the choice is made once per process, from the environment."""
import json
import os
import subprocess
import sys

import pytest

PROGRAM = r"""
import json, numpy as np
import llvmlite.binding as llvm
from symgrad.compiler import Graph
from symgrad.compiler.backend import jit
g = Graph(np.float32)
a, b = g.input("a", (64, 96)), g.input("b", (96, 80))
f = g.compile([a @ b])
rng = np.random.default_rng(0)
x, y = rng.standard_normal((64, 96), np.float32), rng.standard_normal((96, 80), np.float32)
err = float(np.max(np.abs(f(x, y) - x.astype(np.float64) @ y.astype(np.float64))))
llvm.initialize_native_target()
feats = llvm.get_host_cpu_features()
wide = all(feats.get(k) for k in ("avx512f", "avx512bw", "avx512dq", "avx512vl"))
print(json.dumps({"blas": jit.blas(), "err": err, "avx512": wide}))
"""


def run(**env):
    full = {k: v for k, v in os.environ.items() if k not in ("SYMGRAD_BLAS",)}
    full.update(env, SYMGRAD_CACHE="0")
    for k, v in list(full.items()):
        if v is None:
            del full[k]
    out = subprocess.run([sys.executable, "-c", PROGRAM], env=full, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_numpy_instance_when_asked_or_when_the_user_chose_a_core():
    assert "SkylakeX" not in run(SYMGRAD_BLAS="numpy")["blas"]
    assert "SkylakeX" not in run(SYMGRAD_BLAS="auto", OPENBLAS_CORETYPE="Haswell")["blas"]


def test_avx512_kernels_when_the_processor_has_them_and_products_agree():
    got = run(SYMGRAD_BLAS="avx512")
    if not got["avx512"]:
        pytest.skip("this processor has no AVX-512")
    assert got["blas"].endswith("(SkylakeX kernels)")
    assert got["err"] < 1e-4
