import torch
from torch.utils.data import DataLoader, Dataset

from mmzoo.data.sampler import ResumableSampler
from mmzoo.tasks.stages import cycle


class _EpochRecorder(Dataset):
    def __init__(self, n: int) -> None:
        self.n, self.epoch, self.seen = n, None, []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.seen.append(epoch)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return torch.tensor([i, self.epoch])


def test_cycle_announces_each_epoch_to_sampler_and_dataset():
    ds = _EpochRecorder(8)
    sampler = ResumableSampler(len(ds), shuffle=True, seed=0)
    sampler.add_epoch_listener(ds)
    batches = cycle(DataLoader(ds, batch_size=4, sampler=sampler))
    epochs = [[next(batches) for _ in range(2)] for _ in range(3)]
    # every sample of epoch e was drawn after set_epoch(e)
    for e, pair in enumerate(epochs):
        assert torch.all(torch.cat(pair)[:, 1] == e)
    orders = [torch.cat(pair)[:, 0].tolist() for pair in epochs]
    assert all(sorted(o) == list(range(8)) for o in orders)
    assert orders[0] != orders[1] or orders[1] != orders[2]  # the shuffle changes between epochs


def test_cycle_sets_epoch_on_a_plain_loaders_dataset():
    ds = _EpochRecorder(4)
    batches = cycle(DataLoader(ds, batch_size=2))
    got = [next(batches)[:, 1].tolist() for _ in range(4)]
    assert got == [[0, 0], [0, 0], [1, 1], [1, 1]]


def test_fit_plain_decays_matrices_only():
    from mmzoo.tasks.stages import fit_plain

    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 4)
    w0, b0 = lin.weight.detach().clone(), lin.bias.detach().clone()
    # a zero loss: only weight decay moves parameters
    step = lambda batch, progress: {"loss": 0 * (lin.weight.sum() + lin.bias.sum())}  # noqa: E731
    fit_plain(lin, [torch.zeros(1)], 5, 1e-2, step, "decay", weight_decay=0.5)
    assert not torch.equal(lin.weight, w0) and lin.weight.abs().sum() < w0.abs().sum()
    assert torch.equal(lin.bias, b0)
