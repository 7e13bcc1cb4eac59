"""003 — backward() and zero_grad() in a training loop."""
import symgrad.runtime as torch
from symgrad.runtime import nn, optim

torch.manual_seed(0)
model = nn.Linear(2, 1)
loss_fn = nn.MSELoss()
optimizer = optim.SGD(model.parameters(), lr=0.1)
x = torch.tensor([[1., 2.], [3., 4.]])
y_true = torch.tensor([[3.], [7.]])
losses = []
for step in range(2):
    y_pred = model(x)
    loss = loss_fn(y_pred, y_true)
    optimizer.zero_grad()
    loss.backward()
    residual = (y_pred.detach() - y_true).numpy()
    expected = (2 / 2) * residual.T @ x.numpy()       # d loss / dW = 2/N · rᵀx
    print(f"step {step}: loss = {loss.item():.4f}, dW matches formula:",
          bool(abs(model.weight.grad.numpy() - expected).max() < 1e-5))
    optimizer.step()
    losses.append(loss.item())
# On this data lr=0.1 overshoots: the largest curvature of the loss is about 31, and
# 0.1·31 > 2, so each step grows the error (PyTorch's own run of this code does too).
print("with lr=0.1 the loss grows, as in PyTorch:", losses[1] > losses[0])
small = optim.SGD(model.parameters(), lr=0.01)
before = loss_fn(model(x), y_true).item()
for _ in range(20):
    loss = loss_fn(model(x), y_true)
    small.zero_grad()
    loss.backward()
    small.step()
print("with lr=0.01 the loss falls:", loss.item() < before)
x = torch.tensor([[5., 6.], [7., 8.]])
y_true = torch.tensor([[11.], [15.]])
loss = loss_fn(model(x), y_true)
optimizer.zero_grad()
loss.backward()
optimizer.step()
print("a second batch trains too: loss =", round(loss.item(), 4))

# The manual linear model, 100 SGD steps.
w = torch.tensor([1.0], requires_grad=True)
b = torch.tensor([0.0], requires_grad=True)
x = torch.tensor([2.0])
y_true = torch.tensor([4.0])
loss_fn = nn.MSELoss()
optimizer = optim.SGD([w, b], lr=0.1)
before = torch.compile_count()
for i in range(100):
    y_pred = w * x + b
    loss = loss_fn(y_pred, y_true)
    optimizer.zero_grad()
    loss.backward()
    if i == 0:
        print("first step: dw =", w.grad, " db =", b.grad)
    optimizer.step()
print("w = ", w)
print("b = ", b)
print("compiles for 100 steps:", torch.compile_count() - before)
