#!/usr/bin/env bash
# experiment=lcr on Fashion-MNIST with LeNet (docs/results.md, the lcr results on Fashion-MNIST beside the reference).
set -euo pipefail
OUT=${OUT:-outputs/lcr_fashion}
boundary run experiment=lcr dataset=fashion_mnist model=lenet training=reference "hydra.run.dir=$OUT/lenet_nai"
boundary run experiment=lcr dataset=fashion_mnist model=lenet training=reference experiment.mutants.operator=GF \
  experiment.mutants.gamma=0.015 "hydra.run.dir=$OUT/lenet_gf"
