"""Label noise for the mislabeled-sample benchmark (data/label_noise.py)."""

import pytest
import torch

from boundary_cli.data.label_noise import label_noise, noisy_labels


def test_noise_hits_the_rate_changes_every_chosen_label_uniformly_and_is_seeded():
    y = torch.arange(10).repeat(5000)
    new, noisy = noisy_labels(y, 10, 0.2, seed=3)
    assert abs(noisy.float().mean().item() - 0.2) < 0.01
    assert torch.equal(new[~noisy], y[~noisy]) and (new[noisy] != y[noisy]).all()
    # uniform over the 9 other classes: offsets (new - y) mod 10 spread evenly over 1..9
    counts = torch.bincount((new[noisy] - y[noisy]) % 10, minlength=10)[1:].float()
    assert counts.min() / counts.max() > 0.85
    again, noisy2 = noisy_labels(y, 10, 0.2, seed=3)
    assert torch.equal(again, new) and torch.equal(noisy2, noisy)
    bigger, noisy3 = noisy_labels(y, 10, 0.3, seed=3)
    assert noisy3[noisy].all() and torch.equal(bigger[noisy], new[noisy])  # nested in the rate
    assert not torch.equal(noisy_labels(y, 10, 0.2, seed=4)[1], noisy)
    with pytest.raises(ValueError):
        noisy_labels(y, 10, 1.5, 0)


def test_the_modifier_keys_on_rate_and_seed_and_leaves_the_test_split():
    from boundary_cli.data.images import ImageData

    x = torch.rand(40, 1, 4, 4)
    y = torch.arange(40) % 4
    data = ImageData("toy", x, y, x[:8], y[:8], ["a", "b", "c", "d"])
    m = label_noise(0.5, 1)
    out = m.apply(data)
    assert torch.equal(out.test_y, data.test_y) and not torch.equal(out.train_y, data.train_y)
    assert m.key() == {"name": "label_noise", "params": {"rate": 0.5, "seed": 1}}
    assert label_noise(0.5, 2).key() != m.key()


def test_redrawn_labels_keep_the_noisy_points_and_draw_their_wrong_class_anew():
    from boundary_cli.data.label_noise import redrawn_labels

    y = torch.arange(2000) % 10
    given, noisy = noisy_labels(y, 10, 0.2, seed=3)
    assert torch.equal(redrawn_labels(y, 10, 0.2, 3, epoch=1), given)
    epochs = [redrawn_labels(y, 10, 0.2, 3, epoch=e) for e in (2, 3)]
    for labels in epochs:
        assert torch.equal(labels[~noisy], y[~noisy])  # clean points stay clean
        assert (labels[noisy] != y[noisy]).all()        # noisy ones never get their true class back
    changed = (epochs[0][noisy] != given[noisy]).float().mean()
    assert 0.8 < changed < 0.97  # a fresh uniform draw over 9 classes keeps the old one 1/9 of the time
    assert torch.equal(epochs[0], redrawn_labels(y, 10, 0.2, 3, epoch=2))  # fixed by (seed, epoch)
    assert not torch.equal(epochs[0], epochs[1])


def test_the_redraw_switch_enters_the_store_key_only_when_on():
    plain, redraw = label_noise(0.1, 0), label_noise(0.1, 0, redraw_each_epoch=True)
    assert plain.key() == {"name": "label_noise", "params": {"rate": 0.1, "seed": 0}} and plain.labels_at is None
    assert redraw.key()["params"]["redraw_each_epoch"] is True and redraw.labels_at is not None
