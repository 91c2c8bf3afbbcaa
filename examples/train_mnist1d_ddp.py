"""MNIST-1D, data parallel with torchrun (gloo on CPU), trained on CREST coresets.

    crest serve &
    torchrun --standalone --nproc_per_node 2 examples/train_mnist1d_ddp.py --address 127.0.0.1:50051

Each rank trains on its own coresets (disjoint across ranks), every rank switches region at
the same step, and the coordinator judges each check on all ranks' scalars, which rank 0
reports for all of them (the sessions combine them through the gloo process group).
"""

import argparse

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import TensorDataset

from crest.client import CrestLoader, JobConfig, Session, weighted_loss
from crest.embedded import connect
from crest.workloads import cnn1d, mnist1d


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--samples", type=int, default=50_000, help="MNIST-1D size (80% train)")
    parser.add_argument("--address", default="127.0.0.1:50051", help="crest serve host:port")
    args = parser.parse_args()

    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    data = mnist1d(args.samples)
    dataset = TensorDataset(data.x_train, data.y_train)
    torch.manual_seed(0)
    model = DistributedDataParallel(cnn1d())
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)

    coordinator = connect(args.address)
    config = JobConfig(num_examples=len(dataset), num_classes=10, epochs=args.epochs,
                       world_size=world_size, name="MNIST-1D DDP")  # fmt: skip
    coordinator.create_job(config, data.y_train.numpy(), job_id="mnist1d-ddp")  # every rank
    with Session(coordinator, "mnist1d-ddp", model=model, rank=rank) as session:
        for (x, y), batch in CrestLoader(session, dataset):
            loss = weighted_loss(model(x), y, batch.weights)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    coordinator.close()

    if rank == 0:
        model.eval()
        with torch.no_grad():
            accuracy = (model(data.x_test).argmax(1) == data.y_test).float().mean().item()
        print(f"test accuracy {accuracy:.4f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
