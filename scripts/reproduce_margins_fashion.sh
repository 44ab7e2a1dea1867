#!/usr/bin/env bash
# Margin profiles on Fashion-MNIST with LeNet (the standard / robust / flipped table in docs/results.md):
# 500 test samples, full space + 21 DCT blocks of 8x8, reference recipe and L2-PGD adversarial
# training (eps 2, 7 steps; Dykstra projection on flipped data). Each run writes to outputs/margins_fashion/<name>.
set -euo pipefail
OUT=${OUT:-outputs/margins_fashion}
COMMON=(experiment=margin dataset=fashion_mnist model=lenet experiment.n_samples=500)
run() { local name=$1; shift; boundary run "${COMMON[@]}" "$@" "hydra.run.dir=$OUT/$name"; }

run standard
run flipped dataset.variant=flip
run robust training=adversarial
run robust_flipped training=adversarial dataset.variant=flip
