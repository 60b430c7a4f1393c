"""Which crops each step sees: a seeded permutation per (seed, epoch), repeated to fill a fixed
step count if asked, and dealt to the ranks round-robin. Workers and rank count change
nothing about which crop index is drawn at which position of the global order."""
import numpy as np
import torch


class EpochSampler(torch.utils.data.Sampler):
    def __init__(self, dataset_size: int, batch_size: int, steps: int = 0, seed: int = 0, rank: int = 0,
                 world: int = 1):
        if dataset_size < 1:
            raise ValueError("no training crops: the dataset is empty")
        if batch_size % world:
            raise ValueError("optim.batch_size %d must be a multiple of the process count %d" % (batch_size, world))
        self.n, self.batch, self.seed, self.rank, self.world = dataset_size, batch_size, seed, rank, world
        self.steps = steps if steps > 0 else max(1, dataset_size // batch_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def global_order(self) -> np.ndarray:
        need = self.steps * self.batch
        rounds = -(-need // self.n)
        perms = [np.random.default_rng([self.seed, self.epoch, r, 7]).permutation(self.n) for r in range(rounds)]
        return np.concatenate(perms)[:need]

    def __iter__(self):
        return iter(self.global_order()[self.rank::self.world].tolist())

    def __len__(self) -> int:
        return self.steps * self.batch // self.world
