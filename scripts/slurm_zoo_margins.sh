#!/usr/bin/env bash
# The worked example of the model zoos (README, "Model zoos"; docs/results.md): margin distributions, full
# space and DCT blocks, of RobustBench's CIFAR-10 L2 models against its standard (non-robust) WRN-28-10 on the
# whole CIFAR-10 test set, and of two timm ImageNet models on 1,000 ImageNet validation images, as SLURM arrays
# through hydra-submitit-launcher. Run it on the login node from a checkout with the venv installed
# (pip install -e '.[robustbench]' for the first sweep, '.[timm]' for the second; one environment each if
# you want a current timm); the sweep folders must be on a shared filesystem, and the weights are
# downloaded on first use into <cache_dir>/robustbench and the Hugging Face cache (fetch them once on the
# login node when the compute nodes are offline: the same commands with experiment.n_samples=1 and no -m).
set -euo pipefail
stamp=$(date +%Y%m%d-%H%M%S)
robust="${1:-multirun/zoo-cifar10-l2-$stamp}"
imagenet="${2:-multirun/zoo-imagenet-timm-$stamp}"
slurm=(hydra/launcher=slurm hydra.launcher.partition="${PARTITION:-gpu}" hydra.launcher.timeout_min=720
       "hydra.launcher.setup=[\"source $(pwd)/.venv/bin/activate\"]")
RB_MODELS=${RB_MODELS:-Standard,Engstrom2019Robustness,Rice2020Overfitting,Rony2019Decoupling,Augustin2020Adversarial}
boundary run -m "${slurm[@]}" hydra.sweep.dir="$robust" \
  dataset=cifar10 model=robustbench model.arch.threat_model=L2 model.arch.model_name="$RB_MODELS" \
  experiment.n_samples=all
boundary report "$robust"
TIMM_MODELS=${TIMM_MODELS:-resnet50.a1_in1k,convnext_tiny.fb_in1k}
boundary run -m "${slurm[@]}" hydra.sweep.dir="$imagenet" \
  dataset=imagenet model=timm model.pretrained=true model.arch.model_name="$TIMM_MODELS" \
  experiment.n_samples=1000
boundary report "$imagenet"
