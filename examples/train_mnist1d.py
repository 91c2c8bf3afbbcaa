"""MNIST-1D with a small 1-D CNN, trained on CREST coresets (10% of the steps).

    python examples/train_mnist1d.py                      # coordinator in this process
    python examples/train_mnist1d.py --address HOST:PORT  # a running `crest serve`

Compare with the plain version: `diff examples/plain/train_mnist1d.py examples/train_mnist1d.py`.
"""

import argparse

import torch
from torch.utils.data import TensorDataset

from crest.client import CrestLoader, JobConfig, Session, weighted_loss
from crest.embedded import connect
from crest.workloads import cnn1d, mnist1d


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--address", help="crest coordinator host:port (default: in-process)")
    args = parser.parse_args()

    data = mnist1d()
    dataset = TensorDataset(data.x_train, data.y_train)
    torch.manual_seed(0)
    model = cnn1d()
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)

    coordinator = connect(args.address)
    config = JobConfig(num_examples=len(dataset), num_classes=10, epochs=args.epochs,
                       name="MNIST-1D")  # fmt: skip
    job_id = coordinator.create_job(config, data.y_train.numpy())
    session = Session(coordinator, job_id, model=model)
    for (x, y), batch in CrestLoader(session, dataset):
        loss = weighted_loss(model(x), y, batch.weights)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    model.eval()
    with torch.no_grad():
        accuracy = (model(data.x_test).argmax(1) == data.y_test).float().mean().item()
    print(f"test accuracy {accuracy:.4f}")


if __name__ == "__main__":
    main()
