"""002 — the computational graph and the differentiation machine.

Nodes u_i, local Jacobians J_{j→i} on edges, adjoints P_i = Σ P_j·J_{i→j}.
"""
import numpy as np

import symgrad.runtime as torch
from symgrad.compiler import Graph, sigmoid

g = Graph()
u1, u2 = g.input("u1"), g.input("u2")
u3 = u1 + u2
u4 = u2 * u3
f = g.compile(outputs=[u4], wrt=[u1, u2])
at = {"u1": 2.0, "u2": 3.0}
print("u3 =", g.evaluate(u3, at), " u4 =", f(**at))
for source, target in [(u1, u3), (u2, u3), (u2, u4), (u3, u4)]:
    value = g.evaluate(g.local_jacobian_expr(source, target), at)
    print(f"J_{{{source.id}→{target.id}}} = {g.local_jacobian(source, target)} = {value:g}")
for row in g.adjoints(of=u4, at=at):
    print(row)
print("compiled vjp:", f.vjp(2.0, 3.0, seed=1.0))

# The two-layer network of the document: leaves W1, b1, x, W2, b2, ỹ.
n0, n1, n2 = 4, 3, 2
net = Graph()
W1, b1, x = net.input("W1", (n1, n0)), net.input("b1", (n1,)), net.input("x", (n0,))
W2, b2, y_t = net.input("W2", (n2, n1)), net.input("b2", (n2,)), net.input("y_t", (n2,))
z1 = W1 @ x + b1
a1 = sigmoid(z1)
z2 = W2 @ a1 + b2
y = sigmoid(z2)
E = 0.5 * ((y - y_t) * (y - y_t)).sum()
print("J_{z2→y} =", net.local_jacobian(z2, y), "   (σ' = σ(1 − σ), on the diagonal)")
matmul = net.node(next(j for _, j in net.nx.out_edges(W2.id)))   # the node W2 feeds
print(f"J_{{W2→{matmul.name}}} (matmul, a linear map):", net.local_jacobian(W2, matmul))
fnet = net.compile([E], [W1, b1, W2, b2])
rng = np.random.default_rng(0)
values = [rng.standard_normal(s) for s in [(n1, n0), (n1,), (n0,), (n2, n1), (n2,), (n2,)]]
E_value, (dW1, db1, dW2, db2) = fnet.vjp(*values)
print(f"E = {E_value:.6f}")
print("P_W2 = P_9·a1ᵀ =\n", np.round(dW2, 6))

# The same network through the PyTorch-style runtime agrees.
t = [torch.tensor(v, dtype=torch.float64, requires_grad=k != 2 and k != 5)
     for k, v in enumerate(values)]
yt = torch.sigmoid(t[3] @ torch.sigmoid(t[0] @ t[2] + t[1]) + t[4])
Et = 0.5 * ((yt - t[5]) * (yt - t[5])).sum()
Et.backward()
print("runtime agrees:", np.allclose(t[3].grad.numpy(), dW2), np.allclose(t[0].grad.numpy(), dW1))
