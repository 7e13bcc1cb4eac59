"""001 — tensors, leaves, accumulation, view and no_grad."""
import symgrad.runtime as torch

x = torch.ones(2, 2, requires_grad=True)
print(x)
print(x.grad_fn)
y = x + 2
print(y)
print(x.is_leaf, y.is_leaf)
z = y * y * 3
out = z.mean()
print(z, out)
out.backward()
print(x.grad)
print(y.grad if y.retains_grad else None)   # not a leaf: no .grad (PyTorch warns on access)

out2 = x.sum()
out2.backward()
print(x.grad)                               # gradients accumulate: 4.5 + 1

out3 = x.sum()
x.grad.data.zero_()
out3.backward()
print(x.grad)

x = torch.tensor([1.0, 2.0, 3.0, 4.0], requires_grad=True)
y = 2 * x
z = y.view(2, 2)
print(z)
v = torch.tensor([[1.0, 0.1], [0.01, 0.001]], dtype=torch.float)
z.backward(v)
print(x.grad)

# y.backward(w) is the derivative of l = sum(y * w)
x2 = torch.tensor([1.0, 2.0, 3.0, 4.0], requires_grad=True)
l = ((2 * x2).view(2, 2) * v).sum()
l.backward()
print("sum(y * w) gives the same:", x2.grad)

x = torch.tensor(1.0, requires_grad=True)
y1 = x ** 2
with torch.no_grad():
    y2 = x ** 3
y3 = y1 + y2
print(x.requires_grad)
print(y1, y1.requires_grad)
print(y2, y2.requires_grad)
print(y3, y3.requires_grad)
y3.backward()
print(x.grad)
