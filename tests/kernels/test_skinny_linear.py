"""kernels.skinny_linear: the few-rows CPU product equals F.linear, and install() routes
only what it should."""

import pytest
import torch
import torch.nn.functional as F

from kernels.skinny_linear import MAX_ROWS, install, skinny_linear


@pytest.mark.parametrize("shape", [(2, 64), (1, 3, 64), (4, 1, 64), (MAX_ROWS, 64), (1, 64)])
@pytest.mark.parametrize("bias", [True, False])
def test_equals_f_linear(shape, bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g)
    w = torch.randn(96, 64, generator=g)
    b = torch.randn(96, generator=g) if bias else None
    out = skinny_linear(x, w, b)
    assert out.shape == (*shape[:-1], 96) and out.is_contiguous()
    torch.testing.assert_close(out, F.linear(x, w, b), rtol=1e-5, atol=1e-5)


def test_install_routes_float32_linear_layers_and_keeps_their_outputs():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    x = torch.randn(3, 16)
    before = model(x)
    assert install(model) == 2
    assert "forward" in vars(model[0])  # the instance's forward was replaced
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)
    assert install(model) == 0  # installed once only
    assert install(torch.nn.Linear(4, 4).to(torch.bfloat16)) == 0  # other dtypes: torch's path
