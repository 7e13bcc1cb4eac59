"""004 — what the first parameter of backward is."""
import symgrad.runtime as torch
from symgrad.runtime import nn
from symgrad.runtime import Variable

torch.manual_seed(1)
x = torch.randn(3)
x = Variable(x, requires_grad=True)
y = x * 2
k = 1
while y.data.norm() < 1000:
    y = y * 2
    k += 1
gradients = torch.tensor([0.1, 1.0, 0.0001])
y.backward(gradients)
print(x.grad)
print(f"= 2^{k} · [0.1, 1.0, 0.0001]:", (x.grad.numpy() == 2.0**k * gradients.numpy()).all())

a = nn.Parameter(torch.tensor([[1., 1.], [2., 2.]]))
b = nn.Parameter(torch.tensor([[1., 2.], [1., 2.]]))
c = torch.sum(a - b)
c.backward(None)
print(a.grad, b.grad)

# In 2017 PyTorch accepted a 2×2 gradient for the scalar c and printed it back as
# a.grad. A seed must have the output's shape; today that is an error:
a = nn.Parameter(torch.tensor([[1., 1.], [2., 2.]]))
b = nn.Parameter(torch.tensor([[1., 2.], [1., 2.]]))
c = torch.sum(a - b)
try:
    c.backward(torch.tensor([[1., 2.], [3., 4.]]))
except RuntimeError as err:
    print("RuntimeError:", err)

for seed in (torch.ones(2, 2), torch.tensor([[1., 2.], [3., 4.]])):
    a = nn.Parameter(torch.tensor([[0., 0.], [2., 2.]]))
    b = nn.Parameter(torch.tensor([[1., 2.], [1., 2.]]))
    c = a @ b
    c.backward(seed)
    print(a.grad, b.grad)
