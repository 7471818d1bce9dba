import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scalable_lm.core.gating import TaskGates, extend_basis, gate_values


def _two_clusters(seed: int = 0, dim: int = 16, n: int = 60):
    """Inputs of two 'tasks' living in different coordinate blocks (old: dims 0-7, new: dims 8-15)."""
    g = torch.Generator().manual_seed(seed)
    old, new = torch.zeros(n, dim), torch.zeros(n, dim)
    old[:, :8] = torch.randn(n, 8, generator=g) + 2.0
    new[:, 8:] = torch.randn(n, 8, generator=g) + 2.0
    return old, new


def test_gate_is_zero_at_zero_and_symmetric():
    z = torch.tensor([-3.0, 0.0, 3.0])
    g = gate_values(z)
    assert g[1] == 0 and torch.isclose(g[0], g[2]) and 0.9 < float(g[2]) < 1


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 6), st.integers(0, 10_000))
def test_extend_basis_keeps_columns_orthonormal_and_covers_the_energy(k, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(40, k, generator=g) @ torch.randn(k, 12, generator=g)  # rank k inputs
    basis = extend_basis(torch.zeros(12, 0), x, 0.99)
    assert basis.shape[1] <= k
    assert torch.allclose(basis.T @ basis, torch.eye(basis.shape[1]), atol=1e-5)
    inside = (x @ basis).square().sum()
    assert inside >= 0.99 * x.square().sum() - 1e-3


def test_new_gate_starts_open_on_its_task_and_closed_on_the_old_one():
    old, new = _two_clusters()
    gates = TaskGates(16, hidden=32, threshold=0.999)
    gates.add_task(old, torch.Generator().manual_seed(0))
    gates.finish_task(old)
    gates.add_task(new)
    a = gates(torch.cat([old, new]))  # (120, 2)
    assert a.shape == (120, 2)
    assert float(a[60:, 1].mean().detach()) > 0.6  # the new task's own inputs
    assert float(a[:60, 1].mean().detach()) < 0.05  # old inputs: the new gate is ~0


def _train_new_gate(project: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Open the new gate on its inputs for 30 Adam steps; ``(old gate before, after, on old inputs (B, 2);
    new gate on new inputs)``."""
    old, new = _two_clusters(seed=1)
    gates = TaskGates(16, hidden=32, threshold=0.999)
    gates.add_task(old, torch.Generator().manual_seed(0))
    gates.finish_task(old)
    params = gates.add_task(new)
    before = gates(old).detach().clone()
    opt = torch.optim.AdamW(params, lr=0.01)  # Adam: the projection must act on the update, not the gradient
    for _ in range(30):
        snap = gates.snapshot()
        loss = -gates(new)[:, 1].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if project:
            gates.project_update(snap)
    with torch.no_grad():
        return before, gates(old), gates(new)[:, 1]


def test_projected_updates_keep_the_new_gate_shut_on_old_inputs():
    before, after, own = _train_new_gate(project=True)
    assert torch.allclose(after[:, 0], before[:, 0])  # the old task's gate is frozen
    assert float(own.mean()) > 0.9  # the new gate opened on its task
    assert float(after[:, 1].mean()) < 0.1  # and stayed nearly shut on the old task's inputs (0.06 measured)
    _, free, _ = _train_new_gate(project=False)  # the same training without the projection leaks more
    assert float(free[:, 1].mean()) > 5 * float(after[:, 1].mean())  # 0.92 measured


def test_finish_task_freezes_the_gate():
    old, _ = _two_clusters()
    gates = TaskGates(16, hidden=8)
    params = gates.add_task(old)
    gates.finish_task(old)
    assert not any(p.requires_grad for p in params)
    assert gates.basis_in.shape[1] >= 1
