"""Base classes every mmzoo DataModule builds on: resumable, rank-sharded loaders and
augmentation that is a pure function of (seed, epoch, sample index)."""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from .bad_samples import DEFAULT_MAX_BAD_FRACTION, BadSampleError, BadSamples, summarize
from .sampler import ResumableSampler


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for sample `index` of stream `epoch` (or split id) under `seed`."""
    # a cheap integer hash; distinct (seed, epoch, index) triples give unrelated streams
    h = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) & (2**64 - 1)
    h ^= h >> 31
    return h & (2**63 - 1)


class SeededTransformDataset(Dataset):
    """Applies ``transform`` to ``dataset[i]``'s input with torch's RNG seeded from (seed, epoch, i).

    Random augmentations (torchvision transforms draw from torch's global RNG) thus depend only on the
    sample and the epoch, never on worker count, prefetching or where a run was resumed; the global RNG
    of the process is left untouched.
    """

    def __init__(self, dataset: Dataset, transform: Optional[Callable] = None, seed: int = 0) -> None:
        self.dataset = dataset
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        x, *rest = self.dataset[index]
        if self.transform is not None:
            with torch.random.fork_rng(devices=[]):
                # seed only the CPU generator: torch.manual_seed would also reseed (and not restore) CUDA's
                torch.default_generator.manual_seed(sample_seed(self.seed, self.epoch, index))
                x = self.transform(x)
        return (x, *rest)


class BaseDataModule(L.LightningDataModule):
    """Loaders shared by all data modules.

    Subclasses build ``self.train_set``, ``self.val_set``, ``self.test_set`` in ``setup`` and describe
    their data with the class attributes/properties used by models and tasks (``num_classes`` ...).

    Training uses a :class:`ResumableSampler`: the order is a function of (seed, epoch), sharded by rank
    (Lightning's automatic DistributedSampler is turned off by the trainer config), and a checkpoint
    taken mid-epoch resumes at the next unseen batch.

    Args:
        batch_size: samples per batch per process.
        num_workers: loader worker processes.
        seed: data order / augmentation / generation seed.
        pin_memory: pin host memory (GPU training).
        eval_batch_size: batch size of validation/test loaders (default: batch_size).
    """

    def __init__(self, batch_size: int = 64, num_workers: int = 0, seed: int = 0, pin_memory: bool = False,
                 eval_batch_size: Optional[int] = None) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.pin_memory = pin_memory
        self.train_set: Optional[Dataset] = None
        self.val_set: Optional[Dataset] = None
        self.test_set: Optional[Dataset] = None
        self._resume_state: Optional[dict[str, int]] = None
        self._train_sampler: Optional[ResumableSampler] = None
        #: per split, the bad samples found at set-up and at load (mmzoo/data/bad_samples.py)
        self.bad_samples: dict[str, BadSamples] = {}

    # -- bad samples (readers of files) -------------------------------------------------------------
    def bad_samples_of(self, split: str, where: str, what: str = "file",
                       error: type[Exception] = BadSampleError) -> BadSamples:
        """The :class:`BadSamples` of ``split`` (created on first use with the module's ``strict`` and
        ``max_bad_fraction``)."""
        if split not in self.bad_samples:
            self.bad_samples[split] = BadSamples(where, bool(getattr(self, "strict", False)),
                                                 getattr(self, "max_bad_fraction", DEFAULT_MAX_BAD_FRACTION),
                                                 error, what)
        return self.bad_samples[split]

    @property
    def num_skipped(self) -> int:
        """Bad samples skipped so far: at set-up, and at load in this process and its loader workers."""
        return sum(b.count for b in self.bad_samples.values())

    @property
    def skipped_files(self) -> list[str]:
        """Names (files, shard members, table lines) of the skipped samples."""
        return [n for b in self.bad_samples.values() for n in b.names()]

    def teardown(self, stage: str) -> None:
        # set-up skips were reported when found; samples that failed only at load are reported here
        total = sum(b.num_load_failures for b in self.bad_samples.values())
        message = summarize(self.bad_samples)
        if message and total > getattr(self, "_reported_load_failures", 0):
            self._reported_load_failures = total
            rank_zero_warn(f"{type(self).__name__} (after {stage}): {message}")

    # -- distributed context ------------------------------------------------------------------------
    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def collate_fn(self) -> Optional[Callable]:
        """Override for batches that need more than ``default_collate``."""
        return None

    def _loader(self, dataset: Dataset, batch_size: int, sampler, drop_last: bool) -> DataLoader:
        # a private generator: creating an iterator then draws its worker seed from here, not from the
        # global RNG that dropout uses (a resumed run re-creates iterators at other points in time)
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=self.num_workers,
                          pin_memory=self.pin_memory, drop_last=drop_last, collate_fn=self.collate_fn(),
                          persistent_workers=False, generator=generator)

    # -- loaders ------------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            self.setup("fit")
        rank, world = self._rank_world()
        sampler = ResumableSampler(len(self.train_set), shuffle=True, seed=self.seed, num_replicas=world,
                                   rank=rank, drop_last=True)
        if hasattr(self.train_set, "set_epoch"):
            sampler.add_epoch_listener(self.train_set)
        if self._resume_state is not None:
            st = self._resume_state
            sampler.resume(st["epoch"], st["batches_done"] * self.batch_size)
            self._resume_state = None
        self._train_sampler = sampler
        if len(sampler) < self.batch_size:
            raise ValueError(f"training split has {len(sampler)} samples per process, fewer than "
                             f"data.batch_size={self.batch_size}")
        return self._loader(self.train_set, self.batch_size, sampler, drop_last=True)

    def _eval_loader(self, dataset: Optional[Dataset], split: str) -> DataLoader:
        if dataset is None:
            self.setup("fit" if split == "val" else "test")
            dataset = self.val_set if split == "val" else self.test_set
        if dataset is None:
            raise ValueError(f"{type(self).__name__} has no {split} split")
        rank, world = self._rank_world()
        sampler = ResumableSampler(len(dataset), shuffle=False, num_replicas=world, rank=rank, drop_last=False)
        return self._loader(dataset, self.eval_batch_size, sampler, drop_last=False)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_set, "val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_set, "test")

    # -- resume -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Position in the training data, saved in every checkpoint."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return {}
        # `processed` counts the batch whose on_train_batch_end is saving this checkpoint
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"epoch": int(trainer.current_epoch), "batches_done": int(done)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            self._resume_state = dict(state_dict)


class ImageClassificationDataModule(BaseDataModule):
    """Base of image classification data: describes classes and image geometry for models/tasks."""

    #: models read these through the Hydra config (``${data.num_classes}`` ...); subclasses set them
    class_names: Sequence[str] = ()
    image_size: int = 32
    in_chans: int = 3

    @property
    def num_classes(self) -> int:
        return len(self.class_names)
