"""TF32 is scoped, never global: the precision context restores the flags, every DCT matmul runs in IEEE
float32 whatever the process-wide setting, and DeepFool's ``tf32`` reaches the model calls only.

On CPU the flags change no arithmetic, but they are read and set exactly as on a GPU, so the tests
record the flag at the moment each matmul, convolution or model call runs."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from boundary_cli.geometry import precision
from boundary_cli.geometry.dct import (
    DCTBlock,
    block_indicator,
    dct2,
    dct_flip,
    idct2,
    low_pass,
    masked_dct2,
    project,
)
from boundary_cli.geometry.deepfool import DeepFoolParams, deepfool, deepfool_subspaces
from boundary_cli.geometry.precision import current, fp32_precision, ieee_matmul, model_precision

MATMULS = {"matmul", "__matmul__", "__rmatmul__", "mm", "bmm", "einsum", "tensordot", "addmm", "baddbmm"}


def _flags() -> tuple[str, str]:
    return current("matmul"), current("conv")


@pytest.fixture
def process_wide_tf32():
    """The process-wide setting forced to TF32 for the test (as ``allow_tf32 = True`` did), then put back."""
    saved = (precision._get("matmul"), precision._get("conv"))
    precision._set("matmul", "tf32")
    precision._set("conv", "tf32")
    yield
    precision._set("matmul", saved[0])
    precision._set("conv", saved[1])


class Recorder(TorchFunctionMode):
    """Records (function name, matmul flag, conv flag) at every torch function call."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[str, str, str]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls.append((getattr(func, "__name__", str(func)), *_flags()))
        return func(*args, **(kwargs or {}))

    def matmuls(self):
        return [c for c in self.calls if c[0] in MATMULS]


def test_context_sets_and_restores_the_flags_also_on_exception(process_wide_tf32):
    assert _flags() == ("tf32", "tf32")
    with fp32_precision("ieee"):
        assert _flags() == ("ieee", "ieee")
        with model_precision(True):  # nested scopes
            assert _flags() == ("tf32", "tf32")
        assert _flags() == ("ieee", "ieee")
    assert _flags() == ("tf32", "tf32")
    with ieee_matmul():
        assert _flags() == ("ieee", "tf32")  # the DCT scope leaves convolutions alone
    assert _flags() == ("tf32", "tf32")
    with pytest.raises(RuntimeError, match="boom"):
        with model_precision(False):
            assert _flags() == ("ieee", "ieee")
            raise RuntimeError("boom")
    assert _flags() == ("tf32", "tf32")
    precision._set("matmul", "ieee")
    with model_precision(True):
        assert _flags() == ("tf32", "tf32")
    assert _flags() == ("ieee", "tf32")
    with pytest.raises(ValueError, match="precision"):
        with fp32_precision("bf16"):
            pass


def test_new_api_is_used_when_torch_has_it():
    # torch >= 2.9 has fp32_precision; the legacy allow_tf32 flags are then never touched (mixing raises)
    assert precision.NEW_API == hasattr(torch.backends.cuda.matmul, "fp32_precision")
    if precision.NEW_API:
        saved = torch.backends.cuda.matmul.fp32_precision
        with model_precision(True):
            assert torch.backends.cuda.matmul.fp32_precision == "tf32"
            assert torch.backends.cudnn.conv.fp32_precision == "tf32"
        with model_precision(False):
            assert torch.backends.cuda.matmul.fp32_precision == "ieee"
            assert torch.backends.cudnn.conv.fp32_precision == "ieee"
        assert torch.backends.cuda.matmul.fp32_precision == saved


def test_legacy_flags_when_torch_lacks_the_new_api(monkeypatch):
    state = {"matmul": True, "conv": True}

    class Matmul:
        @property
        def allow_tf32(self):
            return state["matmul"]

        @allow_tf32.setter
        def allow_tf32(self, v):
            state["matmul"] = v

    class Cudnn:
        @property
        def allow_tf32(self):
            return state["conv"]

        @allow_tf32.setter
        def allow_tf32(self, v):
            state["conv"] = v

    monkeypatch.setattr(precision, "NEW_API", False)
    monkeypatch.setattr(torch.backends.cuda, "matmul", Matmul())
    monkeypatch.setattr(torch.backends, "cudnn", Cudnn())
    with model_precision(False):
        assert state == {"matmul": False, "conv": False} and current("matmul") == "ieee"
    assert state == {"matmul": True, "conv": True}
    with pytest.raises(KeyError):
        with ieee_matmul():
            assert state == {"matmul": False, "conv": True}
            raise KeyError
    assert state == {"matmul": True, "conv": True}


def test_every_dct_matmul_runs_in_ieee_under_a_process_wide_tf32(process_wide_tf32):
    x = torch.rand(2, 3, 8, 8)
    ind = block_indicator(torch.tensor([0, 2]), torch.tensor([4, 4]), 8)
    with Recorder() as rec:
        dct2(x)
        idct2(x)
        dct_flip(x)
        low_pass(x, 3)
        low_pass(x, 3, "rows_only")
        masked_dct2(x.view(1, 2, 3, 8, 8), ind)
        project(x, DCTBlock(2, 4, 48))
    mm = rec.matmuls()
    assert len(mm) >= 2 * 10  # two matmuls per transform
    assert {flag for _, flag, _ in mm} == {"ieee"}, mm
    assert _flags() == ("tf32", "tf32")  # and the process-wide setting is back


class Probe(nn.Module):
    """A small CNN (conv + linear: no matmul of its own) that records the flags in its forward and,
    through a tensor hook, in its backward."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 5)
        self.seen: list[tuple[str, str, str]] = []

    def forward(self, x):
        self.seen.append(("forward", *_flags()))
        h = torch.tanh(self.conv(x))
        if h.requires_grad:
            h.register_hook(lambda g: self.seen.append(("backward", *_flags())))
        return self.fc(h.flatten(1))


@pytest.mark.parametrize("tf32", [True, False])
def test_deepfool_tf32_reaches_the_model_calls_only(process_wide_tf32, tf32):
    model = Probe().eval()
    x = torch.rand(4, 1, 8, 8)
    want = "tf32" if tf32 else "ieee"
    with Recorder() as rec:
        res = deepfool_subspaces(model, x, [DCTBlock(0, 4, 16), DCTBlock(4, 4, 16)],
                                 DeepFoolParams(tf32=tf32, candidates=3))
    assert (res.iterations >= 1).all()
    kinds = {k for k, _, _ in model.seen}
    assert kinds == {"forward", "backward"}
    # every forward (the stop test included) and every backward of the model, in the requested precision
    assert {(m, c) for _, m, c in model.seen} == {(want, want)}, model.seen
    n_forwards = sum(k == "forward" for k, _, _ in model.seen)
    assert n_forwards == 1 + 2 * int(res.iterations.max())  # class count, then gradient + stop test per iteration
    convs = [c for c in rec.calls if c[0] in ("conv2d", "linear")]
    assert convs and {(m, c) for _, m, c in convs} == {(want, want)}
    mm = rec.matmuls()  # the model has none: these are the DCT projection's
    assert mm and {m for _, m, _ in mm} == {"ieee"}
    assert _flags() == ("tf32", "tf32")  # restored after the run

    model.seen.clear()
    deepfool(model, x, DeepFoolParams(tf32=tf32, candidates=3))  # full space: no DCT at all
    assert {(m, c) for _, m, c in model.seen} == {(want, want)}


def test_tf32_default_is_off(process_wide_tf32):
    model = Probe().eval()
    deepfool(model, torch.rand(2, 1, 8, 8), DeepFoolParams(candidates=3, max_iter=2))
    assert {(m, c) for _, m, c in model.seen} == {("ieee", "ieee")}


def test_prepare_device_switches_nothing_on(monkeypatch):
    from boundary_cli import device

    monkeypatch.setattr(device, "resolve_device", lambda name: torch.device("cuda"))
    before = _flags()
    with model_precision(False):  # whatever the process had: it stays
        assert device.prepare_device("cuda") == torch.device("cuda")
        assert _flags() == ("ieee", "ieee")
    assert _flags() == before


def test_deepfool_with_tf32_leaves_a_float32_process_float32():
    with fp32_precision("ieee"):  # the process as torch starts it for matmuls, convolutions forced alike
        model = Probe().eval()
        deepfool_subspaces(model, torch.rand(2, 1, 8, 8), [DCTBlock(2, 4, 16)],
                           DeepFoolParams(candidates=3, max_iter=2, tf32=True))
        assert {(m, c) for _, m, c in model.seen} == {("tf32", "tf32")}
        assert _flags() == ("ieee", "ieee")
