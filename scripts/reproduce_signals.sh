#!/usr/bin/env bash
# experiment=signals as docs/results.md reports it: every signal ranked, per model, on the two offline datasets.
# Task a (wrong predictions on the test set) and task b (mislabeled training points, 10% injected noise), each on a
# standard and an adversarially trained model of digits (small_cnn) and Fashion-MNIST (lenet); then the meta-network's
# LeNet-5 on Fashion-MNIST with a small stored zoo (its meta-network is then one of the signals). Sizes are cut for
# 2 CPU cores (about 50 minutes in all); `boundary report $OUT` merges every ranking and draws the comparison.
set -euo pipefail
OUT=${OUT:-outputs/signals}
run() { local name=$1; shift; boundary run experiment=signals "$@" hydra.run.dir=$OUT/$name; }
# task a: wrong predictions
run digits_standard_errors dataset=digits model=small_cnn training=quick experiment.n_samples=all
run digits_adversarial_errors dataset=digits model=small_cnn training=adversarial experiment.n_samples=all
run fashion_standard_errors dataset=fashion_mnist model=lenet training=quick experiment.n_samples=2000
run fashion_adversarial_errors dataset=fashion_mnist model=lenet training=adversarial training.recipe.epochs=10 \
  experiment.n_samples=2000
# task b: mislabeled training points (experiment=mislabel's settings: digits whole, Fashion-MNIST's first 5,000)
run digits_standard_mislabeled experiment.task=mislabeled dataset=digits model=small_cnn training=reference \
  experiment.n_samples=all
run digits_adversarial_mislabeled experiment.task=mislabeled dataset=digits model=small_cnn training=adversarial \
  experiment.n_samples=all
run fashion_standard_mislabeled experiment.task=mislabeled dataset=fashion_mnist model=lenet training=reference \
  dataset.train_first=5000 experiment.n_samples=2000
run fashion_adversarial_mislabeled experiment.task=mislabeled dataset=fashion_mnist model=lenet training=adversarial \
  dataset.train_first=5000 experiment.n_samples=2000
# the meta-network's LeNet-5: a small zoo (48 grid points on the first 6,000 training images, classification only)
# stores a meta-network; the signals run on a LeNet-5 of the same family then reads it
boundary run experiment=meta_network dataset=fashion_mnist model=lenet5 dataset.train_first=6000 experiment.zoo.size=48 \
  experiment.noise.count=200 experiment.tasks=[classification] experiment.feature_sets=[with_logits] \
  experiment.meta.width=64 experiment.meta.layers=1 experiment.meta.epochs=10 experiment.meta.patience=3 \
  experiment.pairs.per_model=100 hydra.run.dir=$OUT/meta_network_zoo
run fashion_lenet5_errors dataset=fashion_mnist model=lenet5 training=quick experiment.n_samples=2000
boundary report $OUT
