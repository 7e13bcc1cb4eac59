"""logsumexp(400·logits): shifted by the maximum, so exp never overflows (the naive
log(Σ exp) gives inf), and its gradient is softmax(400·logits)·400."""
import numpy as np

from symgrad.compiler import Graph, exp, log, logsumexp

logits = np.array([1.1, -0.3, 1.8, 1.79])
g = Graph()
z = g.input("z", (4,))
f = g.compile(logsumexp(400 * z), wrt=[z])
value, (grad,) = f.vjp(logits)
shift = 400 * logits.max()
expect = shift + np.log(np.sum(np.exp(400 * logits - shift)))
softmax = np.exp(400 * logits - expect)
print(f"logsumexp(400·z) = {value:.12g}   (expected {expect:.12g})")
print("gradient = 400·softmax:", np.allclose(grad, 400 * softmax, rtol=1e-13), grad)
with np.errstate(over="ignore"):
    naive = g.compile(log(exp(400 * z).sum()))(logits)
print("the naive formula overflows:", naive)
