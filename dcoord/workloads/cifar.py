"""``resnet18-cifar``: ResNet-18 for 3x32x32 images, 10 classes, on CIFAR-10 (python-pickle format) or a
synthetic CIFAR-shaped stand-in; plain torch, nothing downloaded.

Normalisation is GroupNorm, not BatchNorm: BatchNorm mixes the samples of a forward batch (and keeps
running statistics that are not parameters), so the sum of part gradients would not be the batch gradient
and coded decoding could not be exact. GroupNorm normalises each sample on its own.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from dcoord.workloads.base import Workload, WorkloadError, positive_int32

TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILES = ["test_batch"]
_MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)
_STD = torch.tensor([0.2470, 0.2435, 0.2616]).view(3, 1, 1)


def check_cifar_dir(data: object) -> Path:
    """The CIFAR-10 python directory (cifar-10-batches-py), or a WorkloadError naming what is missing."""
    if not isinstance(data, str | Path):
        raise WorkloadError(f"workload_args.data: give a directory path, not {type(data).__name__}")
    root = Path(data).expanduser()
    if not root.is_dir():
        raise WorkloadError(f"workload_args.data: {root} is not a directory (give the CIFAR-10 python folder, "
                         "cifar-10-batches-py, or leave data out for the synthetic stand-in)")
    missing = [f for f in TRAIN_FILES + TEST_FILES if not (root / f).is_file()]
    if missing:
        raise WorkloadError(f"workload_args.data: {root} lacks {', '.join(missing)} (expected CIFAR-10's "
                         "python-pickle files data_batch_1..5 and test_batch)")
    return root


class Cifar10(Dataset):
    """CIFAR-10 from its pickle files; a file is unpickled only when one of its samples is first read,
    and a sample becomes a float tensor only when asked for."""

    def __init__(self, root: str | Path, train: bool = True) -> None:
        self.root = check_cifar_dir(root)
        self.files = TRAIN_FILES if train else TEST_FILES
        self.per_file = 10000
        meta = self.root / "batches.meta"
        if meta.is_file():
            with open(meta, "rb") as f:
                self.per_file = int(pickle.load(f, encoding="bytes").get(b"num_cases_per_batch", 10000))
        self._loaded: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.files_read: set[int] = set()

    def __len__(self) -> int:
        return self.per_file * len(self.files)

    def _file(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        if k not in self._loaded:
            with open(self.root / self.files[k], "rb") as f:
                d = pickle.load(f, encoding="bytes")
            data = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            labels = np.asarray(d[b"labels"], dtype=np.int64)
            if len(data) != self.per_file or len(labels) != self.per_file:
                raise WorkloadError(f"{self.root / self.files[k]}: {len(data)} samples, expected {self.per_file}")
            self._loaded[k] = (data, labels)
            self.files_read.add(k)
        return self._loaded[k]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        data, labels = self._file(i // self.per_file)
        r = i % self.per_file
        x = (torch.from_numpy(data[r]).float() / 255.0 - _MEAN) / _STD
        return x, int(labels[r])


class SyntheticCifar(Dataset):
    """CIFAR-shaped stand-in: sample i is its class's smooth prototype plus noise, generated from i alone
    (nothing stored; any index can be read on its own)."""

    def __init__(self, n: int, offset: int = 0, classes: int = 10) -> None:
        self.n, self.offset, self.classes = n, offset, classes
        gen = torch.Generator().manual_seed(20_240_611)
        low = torch.randn(classes, 3, 8, 8, generator=gen)
        self.protos = F.interpolate(low, size=(32, 32), mode="bilinear", align_corners=False)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if not 0 <= i < self.n:
            raise IndexError(i)
        g = torch.Generator().manual_seed(1_000_003 * (self.offset + i) + 17)
        label = int(torch.randint(self.classes, (1,), generator=g))
        return self.protos[label] + torch.randn(3, 32, 32, generator=g), label


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.n1 = _norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.n2 = _norm(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _norm(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.n1(self.conv1(x)))
        return F.relu(self.n2(self.conv2(out)) + self.short(x))


class ResNet18(nn.Module):
    """ResNet-18, CIFAR variant (3x3 stem, no max-pool): [2, 2, 2, 2] basic blocks of width w..8w."""

    def __init__(self, width: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), _norm(width), nn.ReLU())
        layers, cin = [], width
        for k, stride in enumerate([1, 2, 2, 2]):
            cout = width * 2**k
            layers += [_Block(cin, cout, stride), _Block(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layers(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


def resnet18_cifar(seed: int, data: str | None = None, width: int = 64, samples: int = 50000,
                   test_samples: int = 10000, eval_samples: int = 512) -> Workload:
    """ResNet-18 (about 11.2M parameters at width 64) on CIFAR-10 from ``data``, else synthetic images
    (``samples`` train, ``test_samples`` test). Small ``width`` for CPU tests."""
    if data is not None:
        train, test = Cifar10(data, train=True), Cifar10(data, train=False)
    else:
        train, test = SyntheticCifar(samples), SyntheticCifar(test_samples, offset=samples)
    torch.manual_seed(seed)
    return Workload.from_dataset(ResNet18(width), F.cross_entropy, train, test, name="resnet18-cifar",
                                 eval_samples=eval_samples)


def check_args(args: dict) -> None:
    if args.get("data") is not None:
        check_cifar_dir(args["data"])
    for key in ("width", "samples", "test_samples", "eval_samples"):
        v = args.get(key)
        if key in args and not positive_int32(v):  # null too: it would reach the workload function
            raise WorkloadError(f"workload_args.{key}: give a positive integer below 2^31, got {v!r}")
