#!/usr/bin/env bash
# Margin distributions of hold-me-tight's CIFAR-10 models, standard / flipped / low-pass, on the whole
# test set, as a SLURM array through hydra-submitit-launcher. Run it on the login node from a checkout
# with the venv installed (pip install -e .); the sweep folder must be on a shared filesystem.
# Edit partition, time and resources here or in conf/hydra/launcher/slurm.yaml.
set -euo pipefail
sweep="${1:-multirun/cifar10-margins-$(date +%Y%m%d-%H%M%S)}"
boundary run -m hydra/launcher=slurm \
  hydra.launcher.partition="${PARTITION:-gpu}" hydra.launcher.timeout_min=720 \
  "hydra.launcher.setup=[\"source $(pwd)/.venv/bin/activate\"]" \
  hydra.sweep.dir="$sweep" \
  dataset=cifar10 dataset.variant=none,flip,low_pass model=resnet18,vgg19,densenet121 \
  experiment.n_samples=all
boundary report "$sweep"
