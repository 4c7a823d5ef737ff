"""The FLOP count behind the training benchmark's MFU matches the analytic count of a known model."""

import torch
from torch import nn

from relightful.training.flops import count_flops, datasheet_peak, gemm_flops_per_s, mfu


def known_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 10))


def analytic(batch: int, backward: bool) -> int:
    """2·(multiply-adds): conv = 2·N·C_out·H·W·C_in·k², linear = 2·N·in·out; a backward pass computes each
    layer's weight gradient (the forward's cost) and, above the first layer, its input gradient (the same again)."""
    conv1 = 2 * batch * 8 * 8 * 8 * 3 * 3 * 3
    conv2 = 2 * batch * 4 * 8 * 8 * 8
    linear = 2 * batch * 256 * 10
    forward = conv1 + conv2 + linear
    return forward + (conv1 + 2 * (conv2 + linear) if backward else 0)


def test_forward_flops_equal_the_analytic_count():
    model, x = known_model(), torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert count_flops(lambda: model(x)) == analytic(2, backward=False) == 73_728


def test_training_step_flops_equal_the_analytic_count():
    model, x = known_model(), torch.randn(4, 3, 8, 8)
    optimizer = torch.optim.AdamW(model.parameters())

    def step():
        model(x).square().mean().backward()
        optimizer.step()

    assert count_flops(step) == analytic(4, backward=True)


def test_gemm_rate_and_mfu():
    rate = gemm_flops_per_s("cpu", torch.float32, size=256, seconds=0.05)
    assert 1e8 < rate < 1e14
    assert datasheet_peak("cpu") is None
    assert mfu(2e9, 10.0, 100e9) == 0.2
