"""An MLP on scikit-learn's bundled digits, trained on CREST coresets: nothing in crest is
tied to MNIST-1D or to CNNs. Compare with examples/plain/train_digits.py."""

import argparse

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset

from crest.client import CrestLoader, JobConfig, Session, weighted_loss
from crest.embedded import connect


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--address", help="crest coordinator host:port (default: in-process)")
    args = parser.parse_args()

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    train, test = slice(0, 1400), slice(1400, None)
    dataset = TensorDataset(x[train], y[train])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    coordinator = connect(args.address)
    config = JobConfig(num_examples=1400, num_classes=10, batch_size=32, epochs=args.epochs,
                       train_frac=0.2, name="digits 20%")  # fmt: skip
    session = Session(coordinator, coordinator.create_job(config, y[train].numpy()), model=model)
    for (xb, yb), batch in CrestLoader(session, dataset):
        loss = weighted_loss(model(xb), yb, batch.weights)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    with torch.no_grad():
        accuracy = (model(x[test]).argmax(1) == y[test]).float().mean().item()
    print(f"test accuracy {accuracy:.4f}")


if __name__ == "__main__":
    main()
