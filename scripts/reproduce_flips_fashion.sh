#!/usr/bin/env bash
# The four decision-flip experiments on Fashion-MNIST with the MNIST twin of the reference CNN,
# checkpoints after 5 and 50 epochs of Adam (docs/results.md, "Decision-flip findings on Fashion-MNIST").
# Trains once (cached), then each experiment writes to outputs/flips_fashion/<name>.
set -euo pipefail
OUT=${OUT:-outputs/flips_fashion}
COMMON=(dataset=fashion_mnist model=flip_cnn training=flip_adam training.recipe.epochs=50 "training.save_epochs=[5,50]")
run() { local name=$1; shift; boundary run "${COMMON[@]}" "$@" "hydra.run.dir=$OUT/$name"; }

run decision_flip_e50 experiment=decision_flip
run decision_flip_e5 experiment=decision_flip experiment.epoch=5
run multiple_hits experiment=multiple_hits
run own_to_flip experiment=own_to_flip
run own_to_flip_layer experiment=own_to_flip experiment.centroid.space=layer
run train_again_independent experiment=train_again experiment.start=100 experiment.n_samples=50
run train_again_sequential experiment=train_again experiment.mode=sequential experiment.n_samples=30 experiment.epoch=5
# the same 50 points with a 5x finer step: boundary moves smaller than eta = 0.05 become visible
run train_again_independent_eta001 experiment=train_again experiment.start=100 experiment.n_samples=50 experiment.walk.eta=0.01 experiment.walk.max_steps=10000
# the same 50 points with a fresh Adam instead of the training run's restored state (what the suite did before issue 11)
run train_again_independent_fresh experiment=train_again experiment.start=100 experiment.n_samples=50 experiment.optimizer_state=fresh
