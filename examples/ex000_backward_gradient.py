"""000 — what the `gradient` argument of `backward` does: it computes vᵀJ, not J."""
import numpy as np

import symgrad.runtime as torch
from symgrad.compiler import Graph

x = torch.tensor([0.0, 2.0, 8.0], requires_grad=True)
y = torch.tensor([5.0, 1.0, 7.0], requires_grad=True)
z = x * y
z.backward(torch.tensor([1.0, 1.0, 1.0]))
print("x.grad =", x.grad)
print("y.grad =", y.grad)

# The same graph through the compiler, with its symbolic Jacobians dumped.
g = Graph()
gx, gy = g.input("x", shape=(3,)), g.input("y", shape=(3,))
gz = gx * gy
f = g.compile(outputs=[gz], wrt=[gx, gy])
print("∂z/∂x = diag(%s)    ∂z/∂y = diag(%s)" % (g.local_jacobian(gx, gz), g.local_jacobian(gy, gz)))
jx, jy = f.jacobian([0.0, 2.0, 8.0], [5.0, 1.0, 7.0])
print("∂z/∂x at (x, y) =\n", jx)
print("∂z/∂y at (x, y) =\n", jy)
v = np.array([1.0, 1.0, 1.0])
_, (vjx, vjy) = f.vjp([0.0, 2.0, 8.0], [5.0, 1.0, 7.0], seed=v)
print("vᵀ·∂z/∂x =", vjx, "  vᵀ·∂z/∂y =", vjy)
