#!/usr/bin/env bash
# Margins of the whole ImageNet validation set (50,000 images x full space + 14 DCT blocks) for a
# standard, a robust and a flipped ResNet-50, each split into 8 shards: 24 SLURM jobs of one GPU,
# then one merged result per model (boundary report). Run it on the login node from a checkout with
# the venv installed (pip install -e .); the sweep folder, the cache and the data must be on a shared
# filesystem. Edit partition, time and resources here or in conf/hydra/launcher/slurm.yaml.
#   IMAGENET=/data/imagenet ROBUST=/models/imagenet_l2_3_0.pt FLIPPED=/models/flipped_resnet50.pt \
#     bash scripts/slurm_margin_shards.sh
set -euo pipefail
sweep="${1:-multirun/imagenet-margins-$(date +%Y%m%d-%H%M%S)}"
shards="${SHARDS:-8}"
common=(dataset=imagenet "dataset.root=${IMAGENET:?set IMAGENET to the folder with val/}" model=resnet50
        experiment.n_samples=all experiment.chunk_size=500 "shard.index=range(0,$shards)" "shard.count=$shards"
        hydra.launcher.partition="${PARTITION:-gpu}" hydra.launcher.timeout_min=720
        "hydra.launcher.setup=[\"source $(pwd)/.venv/bin/activate\"]")
boundary run -m hydra/launcher=slurm "${common[@]}" hydra.sweep.dir="$sweep/standard" model.pretrained=true
boundary run -m hydra/launcher=slurm "${common[@]}" hydra.sweep.dir="$sweep/robust" "model.checkpoint=${ROBUST:?}"
boundary run -m hydra/launcher=slurm "${common[@]}" hydra.sweep.dir="$sweep/flipped" "model.checkpoint=${FLIPPED:?}" \
  dataset.variant=flip
boundary report "$sweep"   # report/shards/<run>/{margins,summary}.csv, margins.npy, margins_full.npy, margins.png per model
