"""Noise-robustness labels of zoo members (detectors/noise_robustness.py) against a plain loop."""

from __future__ import annotations

import torch

from boundary_cli.detectors.noise_robustness import noise_draws, noise_robustness
from boundary_cli.models.lenet5 import lenet5
from boundary_cli.training.stacked import stack_members


def test_batched_labels_equal_a_loop_over_models_images_and_draws():
    models = []
    for seed, init in ((0, "default"), (1, "xavier_uniform")):
        torch.manual_seed(seed)
        models.append(lenet5(1, 10, (28, 28), init=init).double().eval())
    params, buffers = stack_members(models)
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 1, 28, 28, generator=gen, dtype=torch.float64)  # each model its own 3 images
    noise = noise_draws(25, (1, 28, 28)).double()
    res = noise_robustness(models[0], params, x, noise, scale=0.9, buffers=buffers, draws_per_call=7)
    for m, net in enumerate(models):
        for s in range(3):
            with torch.no_grad():
                p0 = net(x[m, s:s + 1]).softmax(1)[0]
                same, kl = 0, 0.0
                for e in noise:
                    q = net((x[m, s] + 0.9 * e).unsqueeze(0)).softmax(1)[0]
                    same += int(q.argmax() == p0.argmax())
                    kl += float((p0 * (p0.log() - q.log())).sum())
            assert res.prediction[m, s] == p0.argmax()
            assert res.ratio[m, s].item() == same / 25
            assert abs(res.kl[m, s].item() - kl / 25) < 1e-10


def test_the_draws_are_fixed_by_their_seed_and_unclipped_noise_far_beyond_the_image_flips_predictions():
    assert torch.equal(noise_draws(4, (1, 2, 2)), noise_draws(4, (1, 2, 2)))
    torch.manual_seed(0)
    net = lenet5(1, 10, (28, 28)).eval()
    params, buffers = stack_members([net])
    x = torch.rand(1, 4, 1, 28, 28)
    quiet = noise_robustness(net, params, x, noise_draws(50, (1, 28, 28)), scale=0.0, buffers=buffers)
    assert (quiet.ratio == 1).all() and quiet.kl.abs().max() < 1e-6
    loud = noise_robustness(net, params, x, noise_draws(50, (1, 28, 28)), scale=50.0, buffers=buffers)
    assert (loud.ratio < 1).any() and (loud.kl > 0).all()
