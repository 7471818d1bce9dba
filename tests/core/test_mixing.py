"""(e): the per-row mixing layer equals the dense formula W + Σ w_e B_e A_e on random inputs."""

import pytest
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


def _dense(layer, h, idx, w):
    a, b = torch.cat([t.detach() for t in layer.lora_A]), torch.cat([t.detach() for t in layer.lora_B])
    return dense_reference(h, layer.base_layer.weight, layer.base_layer.bias, a, b, idx, w, layer.scaling)


def test_a_route_reads_only_the_tasks_it_uses_and_equals_the_dense_formula():
    layer = _random_bank(tasks=4)
    for t in range(3):  # tasks 0-2 frozen, task 3 still training
        layer.lora_A[t].requires_grad_(False)
        layer.lora_B[t].requires_grad_(False)
    h, idx = torch.randn(5, 6, 10), torch.randint(0, 16, (5, 4))
    idx[0] = torch.tensor([0, 13, 14, 15])  # a row mixing stored and trainable entries
    w = torch.softmax(torch.randn(5, 4), dim=-1)
    with routed({"l": layer}, idx, w):
        out = layer(h)
    assert torch.allclose(out, _dense(layer, h, idx, w), atol=1e-5)
    out.sum().backward()  # gradients reach only the trainable task
    assert layer.lora_A[3].grad is not None and layer.lora_A[3].grad.abs().sum() > 0
    assert all(layer.lora_A[t].grad is None for t in range(3))


def test_growing_the_store_keeps_earlier_entries_and_outputs():
    layer = _random_bank(tasks=1, entries=4)
    h, idx, w = torch.randn(3, 2, 10), torch.zeros(3, 2, dtype=torch.long), torch.full((3, 2), 0.5)
    idx[:, 1] = 3
    outputs = []
    for t in range(12):  # capacity grows several times; every earlier entry must survive the moves
        layer.lora_A[t].requires_grad_(False)
        layer.lora_B[t].requires_grad_(False)
        with routed({"l": layer}, idx, w):
            outputs.append(layer(h))
        assert torch.equal(outputs[-1], outputs[0])
        layer.add_task(4)
        with torch.no_grad():
            layer.lora_B[-1].normal_()
    layer.truncate(5)  # dropping tasks, then adding again
    layer.add_task(4)
    with routed({"l": layer}, torch.tensor([[0, 21]]), torch.tensor([[0.3, 0.7]])):
        out = layer(h[:1])
    assert torch.allclose(out, _dense(layer, h[:1], torch.tensor([[0, 21]]), torch.tensor([[0.3, 0.7]])), atol=1e-5)


def test_inference_path_reuses_the_routes_factors_and_equals_the_dense_formula():
    layer = _random_bank(seed=3)
    idx = torch.randint(0, 12, (5, 2))
    w = torch.softmax(torch.randn(5, 2), dim=-1)
    a, b = torch.cat(list(layer.lora_A)), torch.cat(list(layer.lora_B))
    with torch.no_grad(), routed({"l": layer}, idx, w):
        for length in (6, 1, 1):  # a prompt, then one token at a time as in generation
            h = torch.randn(5, length, 10)
            dense = dense_reference(h, layer.base_layer.weight, layer.base_layer.bias, a, b, idx, w, layer.scaling)
            assert torch.allclose(layer(h), dense, atol=1e-5)
        cached = layer._route_cache
        assert cached is not None and cached[0] is layer.route
    assert layer._route_cache is None  # dropped with the route
    idx2 = torch.randint(0, 12, (5, 2))  # a new route gets new factors, not the cached ones
    h = torch.randn(5, 3, 10)
    with torch.no_grad(), routed({"l": layer}, idx2, w):
        out = layer(h)
    dense = dense_reference(h, layer.base_layer.weight, layer.base_layer.bias, a, b, idx2, w, layer.scaling)
    assert torch.allclose(out, dense, atol=1e-5)


def test_a_task_whose_factors_are_never_routed_to_is_never_read():
    """Tasks given as tensors (as the store maps them from files) are used as they are; a route that does not
    touch a task does not read it: here its factors are NaN, and the outputs stay finite and exact."""
    layer = _random_bank(tasks=2)
    a, b = torch.full_like(layer.lora_A[0], float("nan")), torch.full_like(layer.lora_B[0], float("nan"))
    nan_a = a
    layer.add_factors(a, b)
    assert layer.lora_A[2].data_ptr() == nan_a.data_ptr() and not layer.lora_A[2].requires_grad  # not copied
    layer.add_task(4)
    h, idx = torch.randn(3, 5, 10), torch.tensor([[0, 1], [5, 14], [13, 15]])  # tasks 0, 1 and 3, never 2
    w = torch.full((3, 2), 0.5)
    with torch.no_grad(), routed({"l": layer}, idx, w):
        out = layer(h)
    assert torch.isfinite(out).all()
    keep = [0, 1, 3]
    a_all = torch.cat([layer.lora_A[t].detach() for t in keep])
    b_all = torch.cat([layer.lora_B[t].detach() for t in keep])
    local = torch.tensor([[0, 1], [5, 10], [9, 11]])  # the same entries without task 2's four
    dense = dense_reference(h, layer.base_layer.weight, layer.base_layer.bias, a_all, b_all, local, w, layer.scaling)
    assert torch.allclose(out, dense, atol=1e-5)
    with pytest.raises(IndexError, match="out of range"), routed({"l": layer}, torch.tensor([[16]]), torch.ones(1, 1)):
        layer(h[:1])
