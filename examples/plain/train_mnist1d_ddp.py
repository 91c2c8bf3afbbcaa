"""MNIST-1D, data parallel with torchrun (gloo on CPU), plain PyTorch.

torchrun --standalone --nproc_per_node 2 examples/plain/train_mnist1d_ddp.py
"""

import argparse

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from crest.workloads import cnn1d, mnist1d


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--samples", type=int, default=50_000, help="MNIST-1D size (80% train)")
    args = parser.parse_args()

    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    data = mnist1d(args.samples)
    dataset = TensorDataset(data.x_train, data.y_train)
    torch.manual_seed(0)
    model = DistributedDataParallel(cnn1d())
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)

    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank)
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        for x, y in DataLoader(dataset, batch_size=128, sampler=sampler):
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    if rank == 0:
        model.eval()
        with torch.no_grad():
            accuracy = (model(data.x_test).argmax(1) == data.y_test).float().mean().item()
        print(f"test accuracy {accuracy:.4f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
