#!/usr/bin/env bash
# The meta-network on Fashion-MNIST (the 28x28 data of an offline machine; on a user's machine dataset=mnist
# dataset.download=true is the reference's data), in the reference's protocol (split by pair, balanced pairs) and
# in the strict one (split by model and image, random pairs at the members' own error rates), with and without the
# logits among the features, 4 backbones x 2 tasks, 1 seed. Sizes cut for 2 CPU cores (docs/results.md says how):
# ZOO grid points drawn, the first TRAIN training images, NOISE noisy copies per image, a narrower meta-network.
# The zoo is trained once (the checkpoint store) and serves both protocols.
set -euo pipefail
ZOO=${ZOO:-192}; TRAIN=${TRAIN:-6000}; NOISE=${NOISE:-200}; OUT=${OUT:-outputs/meta_network_fashion}; SEEDS=${SEEDS:-[1,2,3]}
common=(experiment=meta_network dataset=fashion_mnist model=lenet5 dataset.train_first=$TRAIN
        experiment.zoo.size=$ZOO experiment.noise.count=$NOISE experiment.backbones=[rnn,lstm,gru,transformer]
        experiment.meta.width=64 experiment.meta.layers=1 experiment.meta.epochs=10 experiment.meta.patience=3 experiment.seeds=$SEEDS)
boundary run "${common[@]}" experiment.split_by=pair experiment.pairs.selection=balanced hydra.run.dir=$OUT/reference "$@"
boundary run "${common[@]}" experiment.split_by=model experiment.pairs.selection=random experiment.pairs.per_model=100 \
  hydra.run.dir=$OUT/strict "$@"
