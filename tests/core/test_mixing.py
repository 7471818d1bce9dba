"""(e): the per-row mixing layer equals the dense formula W + Σ w_e B_e A_e on random inputs."""

import torch
from torch import nn

from scalable_lm.adapters.inject import BankLinear, inject, routed
from scalable_lm.core.mixing import dense_reference, mixed_lowrank


def _random_bank(seed=0, tasks=3, entries=4, rank=3, d_in=10, d_out=7):
    torch.manual_seed(seed)
    layer = BankLinear(nn.Linear(d_in, d_out), rank=rank, alpha=6.0)
    for _ in range(tasks):
        layer.add_task(entries)
    with torch.no_grad():
        for b in layer.lora_B:
            b.normal_()
    return layer


def test_bank_linear_equals_dense_formula():
    layer = _random_bank()
    h = torch.randn(5, 6, 10)
    idx = torch.randint(0, 12, (5, 4))
    w = torch.softmax(torch.randn(5, 4), dim=-1)
    with routed({"l": layer}, idx, w):
        fast = layer(h)
    a, b = torch.cat(list(layer.lora_A)), torch.cat(list(layer.lora_B))
    dense = dense_reference(h, layer.base_layer.weight, layer.base_layer.bias, a, b, idx, w, layer.scaling)
    assert torch.allclose(fast, dense, atol=1e-5)


def test_mixed_lowrank_handles_2d_inputs_and_rejects_wrong_rows():
    a, b = torch.randn(6, 2, 5), torch.randn(6, 3, 2)
    h, idx, w = torch.randn(4, 5), torch.randint(0, 6, (4, 2)), torch.rand(4, 2)
    out = mixed_lowrank(h, a, b, idx, w)
    expected = torch.stack([sum(w[i, k] * b[idx[i, k]] @ a[idx[i, k]] @ h[i] for k in range(2)) for i in range(4)])
    assert torch.allclose(out, expected, atol=1e-5)
    try:
        mixed_lowrank(h, a, b, idx[:3], w[:3])
    except ValueError as err:
        assert "rows" in str(err)
    else:
        raise AssertionError("mismatched rows accepted")


def test_without_route_layer_is_its_base():
    layer = _random_bank()
    h = torch.randn(2, 3, 10)
    assert torch.equal(layer(h), layer.base_layer(h))


def test_inject_wraps_matching_linears_only():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 2)))
    wrapped = inject(model, ["2.0"], rank=2, alpha=2.0)
    assert list(wrapped) == ["2.0"] and isinstance(model[2][0], BankLinear) and isinstance(model[0], nn.Linear)
    try:
        inject(model, ["nothing"], 2, 2.0)
    except ValueError as err:
        assert "no nn.Linear" in str(err)
