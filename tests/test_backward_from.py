"""backward_from: the link's gradients applied exactly as torch.autograd.backward does, without its
first-call import of sympy (a quarter second in every device and edge process)."""

from __future__ import annotations

import subprocess
import sys

import torch

from tierflow.tiers.models import InputShape, build_model
from tierflow.tiers.split import split_model
from tierflow.tiers.step import backward_from


def _stage_grads(apply) -> tuple[list[torch.Tensor], torch.Tensor]:
    shape = InputShape(1, 8, 8, 10)
    model = build_model("resnet_small", shape, seed=3)
    lower = split_model(model, ["block1_conv_b"])[0].module  # two outputs: a skip crosses the cut
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(1), requires_grad=True)
    outs = lower(x)
    outs = list(outs) if isinstance(outs, tuple | list) else [outs]
    gen = torch.Generator().manual_seed(2)
    grads = [torch.randn(o.shape, generator=gen) * 1e3 for o in outs]
    assert len(outs) == 2
    apply(outs, grads)
    return [p.grad.clone() for p in lower.parameters()], x.grad.clone()


def test_backward_from_equals_autograd_backward_bit_for_bit():
    params_ref, x_ref = _stage_grads(torch.autograd.backward)
    params, x = _stage_grads(backward_from)
    assert len(params) == len(params_ref) > 0
    for got, want in zip(params, params_ref, strict=True):
        assert torch.equal(got, want)
    assert torch.equal(x, x_ref)


def test_backward_from_with_nothing_to_do_is_a_no_op():
    backward_from([], [])


def test_backward_from_does_not_import_sympy():
    code = ("import sys, torch\n"
            "from tierflow.tiers.step import backward_from\n"
            "x = torch.ones(3, requires_grad=True)\n"
            "backward_from([x * 2], [torch.ones(3)])\n"
            "assert x.grad.tolist() == [2.0, 2.0, 2.0]\n"
            "print('sympy' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
