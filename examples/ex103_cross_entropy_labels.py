"""Softmax cross-entropy with integer labels: the labels are an int64 input, the
log-probabilities of the right classes a gather (``logp[arange(N), y]``); its adjoint is a
scatter-add.  The labels are checked against the class count at every call."""
import numpy as np

from symgrad.compiler import Graph, log_softmax

N, K = 5, 4
g = Graph()
logits = g.input("logits", (N, K))
labels = g.input("labels", (N,), dtype=np.int64)
loss = -log_softmax(logits, axis=1)[np.arange(N), labels].mean()
f = g.compile(loss, wrt=[logits])

rng = np.random.default_rng(0)
L = rng.standard_normal((N, K)) * 3
y = np.array([0, 3, 1, 1, 2])
value, (grad,) = f.vjp(L, y)
p = np.exp(L - L.max(1, keepdims=True))
p /= p.sum(1, keepdims=True)
expect = -np.mean(np.log(p[np.arange(N), y]))
onehot = np.eye(K)[y]
print(f"loss = {value:.12g}   (numpy: {expect:.12g})")
print("gradient = (softmax − onehot)/N:", np.allclose(grad, (p - onehot) / N, rtol=1e-12))
try:
    f(L, np.array([0, 4, 1, 1, 2]))
except IndexError as err:
    print("a label out of range is refused:", err)
