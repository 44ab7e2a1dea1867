"""What the runner hands an experiment, and what an experiment hands back to be written."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from omegaconf import DictConfig
from torch import Tensor, nn

from boundary_cli.cache import ChunkStore
from boundary_cli.data.images import ImageData


@dataclass
class RunContext:
    """Everything built for a run.

    Attributes:
        cfg: the composed config; an experiment reads its own ``cfg.experiment`` section.
        data: the dataset with its variant applied.
        raw_test_x: (M, C, H, W) test images before the variant (for figures).
        model: classifier in eval mode on ``device``, inputs in pixel units.
        model_id: hash of the model's weights (part of every chunk key).
        device: where the work runs.
        identity: columns that identify the run in every table (dataset, variant, model, ...).
        chunks: store of finished work chunks in the cache.
        memory_budget: bytes the experiment may use for one batch of work.
        progress: tqdm ``disable`` semantics inverted: None = auto (only on a terminal).
        snapshots: ``{epoch: (model, provenance)}`` for every epoch the experiment's
            ``model_epochs(cfg)`` asked for (None = the final weights); ``model`` is the first.
    """

    cfg: DictConfig
    data: ImageData
    raw_test_x: Tensor
    model: nn.Module
    model_id: str
    device: torch.device
    identity: dict[str, Any]
    chunks: ChunkStore
    memory_budget: int
    progress: bool | None = None
    snapshots: dict[int | None, tuple[nn.Module, dict[str, Any]]] = field(default_factory=dict)


@dataclass
class ExperimentOutput:
    """Results to be written into the run dir: ``<name>.csv``, ``<name>.npy``, ``<name>.png``, and
    ``stats`` merged into ``run.json``."""

    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    figures: dict[str, Figure] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
