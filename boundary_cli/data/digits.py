"""scikit-learn's bundled 8x8 handwritten digits: the default dataset, available with no files or network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from boundary_cli.data.images import ImageData


def load_digits(
    data_dir: Path,
    cache_dir: Path,
    download: bool = False,
    test_size: int = 500,
    split_seed: int = 0,
) -> ImageData:
    """Load the 1797 scikit-learn digits as (N, 1, 8, 8) images in [0, 1] with a fixed stratified split.

    The pixel values 0..16 are divided by 16. The split is ``train_test_split`` with
    ``stratify=y`` and ``random_state=split_seed``, so the defaults always give the same 1297 training
    and 500 test images. ``data_dir``, ``cache_dir`` and ``download`` are unused: they are accepted so
    that every loader has the same signature.
    """
    # Imported here: scikit-learn (and scipy with it) takes a while to import and only this loader needs it.
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    x, y = sklearn_digits(return_X_y=True)
    images = (x.reshape(-1, 1, 8, 8) / 16.0).astype(np.float32)
    labels = y.astype(np.int64)
    train_x, test_x, train_y, test_y = train_test_split(
        images, labels, test_size=test_size, stratify=labels, random_state=split_seed
    )
    return ImageData(
        name="digits",
        train_x=torch.from_numpy(np.ascontiguousarray(train_x)),
        train_y=torch.from_numpy(np.ascontiguousarray(train_y)),
        test_x=torch.from_numpy(np.ascontiguousarray(test_x)),
        test_y=torch.from_numpy(np.ascontiguousarray(test_y)),
        classes=[str(i) for i in range(10)],
    )
