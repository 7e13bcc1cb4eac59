# Written for symgrad's corpus harness (not a published program): torch.autograd.grad
# with create_graph, a hook that rescales a gradient, retain_grad and in-place setitem.
import torch

x = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64, requires_grad=True)
y = (x ** 3).sum()
(g,) = torch.autograd.grad(y, x, create_graph=True)
(h,) = torch.autograd.grad(g.sum(), x)
print(g.detach(), h)  # g's grad_fn is symgrad's compiled backward, named differently
a = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64, requires_grad=True)
b = a * 2
b.register_hook(lambda grad: grad * 10)
b.retain_grad()
c = b.sin()
c.sum().backward()
print(a.grad, b.grad)
z = torch.zeros(4, dtype=torch.float64)
z[1:] = a * a
z[0] = a[2]
(z * torch.arange(1, 5, dtype=torch.float64)).sum().backward()
print(z, a.grad, z.grad_fn)
