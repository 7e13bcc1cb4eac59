# Written for symgrad's corpus harness (not a published program): an MLP classifier with
# CrossEntropyLoss and Adam, saved and loaded through state_dict.
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
x = torch.randn(64, 4)
labels = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()
model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3))
opt = torch.optim.Adam(model.parameters(), lr=0.05)
loss_fn = nn.CrossEntropyLoss()
for step in range(30):
    opt.zero_grad()
    loss = loss_fn(model(x), labels)
    loss.backward()
    opt.step()
    if step % 5 == 4:
        accuracy = (model(x).argmax(dim=1) == labels).float().mean()
        print(step, f"{loss.item():.6f}", f"{accuracy.item():.4f}")
torch.save(model.state_dict(), "model.pt")
clone = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3))
clone.load_state_dict(torch.load("model.pt"))
with torch.no_grad():
    print(torch.equal(clone(x), model(x)), F.softmax(clone(x[:2]), dim=1))
