"""A piecewise function from SymPy: Piecewise with relational conditions becomes a chain of
where() selections; the derivative flows into the branch chosen at each point."""
import numpy as np
import sympy as sp

from symgrad.compiler import Graph

x = sp.Symbol("x")
f = sp.Piecewise((x ** 2, x < 0), (sp.sin(x), x < sp.pi), (x - sp.pi, True))
g, out = Graph.from_sympy(f, [x], shapes={"x": (5,)})
h = g.compile(out.sum(), wrt=[g.node("x")])
points = np.array([-1.5, -0.0, 1.0, 3.0, 4.0])
value, (grad,) = h.vjp(points)
fx = sp.lambdify(x, f, "numpy")
dfx = sp.lambdify(x, sp.diff(f, x), "numpy")
print("f  =", [float(fx(p)) for p in points])
print("f' =", grad, "  sympy's:", [float(dfx(p)) for p in points])
print("agrees:", np.isclose(value, sum(float(fx(p)) for p in points), rtol=1e-15),
      np.allclose(grad, [float(dfx(p)) for p in points], rtol=1e-15))
