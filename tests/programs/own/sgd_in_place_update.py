# Written for symgrad's corpus harness (not a published program): the manual SGD update
# most published programs use, in place under no_grad, with a DataLoader that shuffles.
import torch
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(3)
X = torch.randn(48, 3)
true_w = torch.tensor([[2.0], [-1.0], [0.5]])
y = X @ true_w + 0.1 * torch.randn(48, 1)
w = torch.zeros(3, 1, requires_grad=True)
b = torch.zeros(1, requires_grad=True)
params = [w, b]
loader = DataLoader(TensorDataset(X, y), batch_size=16, shuffle=True)
for epoch in range(5):
    for xb, yb in loader:
        loss = ((xb @ w + b - yb) ** 2).mean()
        loss.backward()
        with torch.no_grad():
            for p in params:
                p -= 0.1 * p.grad
                p.grad.zero_()
    print(epoch, loss.item(), w.view(-1).tolist(), b.item())
print(params[0] is w, w.requires_grad, w.is_leaf)
