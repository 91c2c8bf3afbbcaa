"""MNIST-1D with a small 1-D CNN, plain PyTorch (the baseline of examples/train_mnist1d.py)."""

import argparse

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from crest.workloads import cnn1d, mnist1d


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=0.05)
    args = parser.parse_args()

    data = mnist1d()
    dataset = TensorDataset(data.x_train, data.y_train)
    torch.manual_seed(0)
    model = cnn1d()
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)

    loader = DataLoader(dataset, batch_size=128, shuffle=True)
    for _epoch in range(args.epochs):
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    model.eval()
    with torch.no_grad():
        accuracy = (model(data.x_test).argmax(1) == data.y_test).float().mean().item()
    print(f"test accuracy {accuracy:.4f}")


if __name__ == "__main__":
    main()
