"""Image sets too large for memory (ImageNet val: 50,000 x 3 x 224 x 224 float32 is 30 GB): images
are decoded when a batch is asked for, and a variant (frequency flip, low-pass) is applied per batch.

A :class:`LazyImages` behaves like the (N, C, H, W) tensor the in-memory datasets hold for the
operations experiments use: ``len``, ``shape``, and indexing by an int, a slice, a list or a 1-D index
tensor, which returns a float32 tensor.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import torch
from torch import Tensor
from torch.utils.data import Dataset

Index = int | slice | Sequence[int] | Tensor

# below this many images a batch is decoded in the calling process (worker start-up costs more)
MIN_IMAGES_FOR_WORKERS = 64


def default_workers() -> int:
    """Decoding threads per batch: the CPUs this process may use, at most 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return max(0, min(8, n))


@dataclass(frozen=True)
class LazyImages:
    """A read-only image set of fixed shape backed by a torch ``Dataset`` of (image, label) pairs.

    Attributes:
        dataset: yields ((C, H, W) float tensor in [0, 1], label) pairs; labels are not used here.
        image_shape: (C, H, W) of every image.
        transform: applied to each decoded batch (B, C, H, W) -> (B, C, H, W), e.g. a frequency
            flip; None for the images as decoded.
        check: called on each transformed batch (e.g. a value-range check); None for none.
        workers: decoding threads for batches of at least MIN_IMAGES_FOR_WORKERS images.
    """

    dataset: Dataset
    image_shape: tuple[int, int, int]
    transform: Callable[[Tensor], Tensor] | None = None
    check: Callable[[Tensor], None] | None = None
    workers: int = 0

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self.image_shape))

    def with_transform(self, fn: Callable[[Tensor], Tensor], check: Callable[[Tensor], None] | None = None) -> LazyImages:
        """The same images with ``fn`` applied after the current transform (and ``check`` after that)."""
        first = self.transform
        composed = fn if first is None else (lambda x: fn(first(x)))
        return replace(self, transform=composed, check=check)

    def _indices(self, index: Index) -> list[int]:
        n = len(self)
        if isinstance(index, Tensor):
            if index.dtype == torch.bool:
                index = index.nonzero().squeeze(1)
            return [int(i) % n if i < 0 else int(i) for i in index.reshape(-1).tolist()]
        if isinstance(index, slice):
            return list(range(n))[index]
        if isinstance(index, int):
            return [index % n]
        return [int(i) % n if int(i) < 0 else int(i) for i in index]

    def _image(self, i: int) -> Tensor:
        return torch.as_tensor(self.dataset[i][0], dtype=torch.float32)

    def __getitem__(self, index: Index) -> Tensor:
        """The images at ``index`` as a (B, C, H, W) float32 tensor ((C, H, W) for an int index)."""
        ids = self._indices(index)
        for i in ids:
            if not 0 <= i < len(self):
                raise IndexError(f"image index {i} out of range for {len(self)} images")
        if not ids:
            return torch.empty((0, *self.image_shape))
        workers = self.workers if len(ids) >= MIN_IMAGES_FOR_WORKERS else 0
        if workers > 1:  # threads, not processes: PIL decodes and resizes without the GIL, and no fork
            with ThreadPoolExecutor(max_workers=workers) as pool:
                images = list(pool.map(self._image, ids))
        else:
            images = [self._image(i) for i in ids]
        x = torch.stack(images)
        if x.shape[1:] != self.image_shape:
            raise ValueError(f"decoded images have shape {tuple(x.shape[1:])}, expected {self.image_shape}")
        if self.transform is not None:
            x = self.transform(x)
        if self.check is not None:
            self.check(x)
        return x[0] if isinstance(index, int) else x


def is_lazy(x: object) -> bool:
    """Whether ``x`` is a lazily decoded image set rather than an in-memory tensor."""
    return isinstance(x, LazyImages)
