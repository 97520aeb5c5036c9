"""Train the seed classifier on the seed task and print its test accuracy.

    python scripts/train.py
"""

import torch
import torch.nn.functional as F

from rnnlab.models import SequenceClassifier


def make_data(n: int, generator: torch.Generator):
    x = torch.randn(n, 20, 10, generator=generator)  # (B, T, D)
    y = (x.mean(dim=(1, 2)) > 0).long()  # label: is the mean over the whole sequence positive?
    return x, y


def main(epochs: int = 20, batch_size: int = 64, seed: int = 0) -> float:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    (x_train, y_train), (x_test, y_test) = make_data(4000, g), make_data(1000, g)
    model = SequenceClassifier(input_size=10, hidden_size=64, num_classes=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(len(x_train)).split(batch_size):
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            acc = (model(x_test).argmax(-1) == y_test).float().mean().item()
        print(f"epoch {epoch + 1:2d}  train loss {loss.item():.4f}  test acc {acc:.4f}")
    return acc


if __name__ == "__main__":
    main()
