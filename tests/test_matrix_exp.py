"""The orthogonal 1x1 weights without a data-dependent degree choice: the same W as torch.linalg.matrix_exp
on every shipped IRAE file, the same folded restore weights bit for bit, and one fixed sequence of kernels."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from irae_cli.model import flows
from irae_cli.model.expm import MAX_SQUARINGS, matrix_exp_fixed, squarings
from irae_cli.model.folded import fold
from irae_cli.weights import WEIGHTS_DIR, load_weights

SHIPPED_IRAE = sorted(WEIGHTS_DIR.glob("irae-*.safetensors"))


class _Ops(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def _skew(n: int, scale: float, seed: int) -> torch.Tensor:
    a = torch.randn(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * scale
    return a - a.t()


def test_shipped_files_are_there():
    assert len(SHIPPED_IRAE) >= 6


@pytest.mark.parametrize("path", SHIPPED_IRAE, ids=lambda p: p.stem)
def test_w_equals_torch_matrix_exp_on_every_shipped_file(path):
    model = load_weights(path, device="cpu").model
    convs = [m for m in model.modules() if isinstance(m, flows.InvConv1x1)]
    assert convs
    for conv in convs:
        skew = conv.a.detach().double() - conv.a.detach().double().t()
        reference = torch.linalg.matrix_exp(skew)
        assert (conv.weight64().detach() - reference).abs().max().item() <= 1e-12
    # the batched weights of a training step too
    with flows.batched_invconv_weights(model):
        for conv in convs:
            skew = conv.a.detach().double() - conv.a.detach().double().t()
            assert (conv._step[1].detach() - torch.linalg.matrix_exp(skew)).abs().max().item() <= 1e-12


@pytest.mark.parametrize("path", SHIPPED_IRAE, ids=lambda p: p.stem)
def test_restore_weights_are_bit_identical_to_the_old_ones(path, monkeypatch):
    """Restore runs the folded model: every float32 tensor of it is the same bits whichever exponential
    built W, so its outputs are byte-identical."""
    model = load_weights(path, device="cpu").model
    new = {k: v.clone() for k, v in fold(model).state_dict().items()}
    monkeypatch.setattr(flows, "matrix_exp_fixed", torch.linalg.matrix_exp)
    old = fold(model).state_dict()
    assert new.keys() == old.keys()
    for k in new:
        assert torch.equal(new[k], old[k]), k


def test_the_kernels_do_not_depend_on_the_values():
    """No degree chosen on the host: small and large matrices run the same ops, none of them reading a value."""
    runs = []
    for scale in (1e-3, 40.0):
        with _Ops() as rec:
            matrix_exp_fixed(torch.stack([_skew(12, scale, 0), _skew(12, scale, 1)]))
        runs.append(rec.ops)
    assert runs[0] == runs[1]
    assert not any("local_scalar_dense" in op or "linalg" in op or "nonzero" in op for op in runs[0])
    with _Ops() as rec:
        flows.InvConv1x1(12, torch.Generator().manual_seed(0)).weight64()
    assert not any("linalg" in op for op in rec.ops)


@pytest.mark.parametrize("scale", [0.0, 1e-6, 0.3, 3.0, 60.0])
def test_accurate_and_orthogonal_across_norms(scale):
    skew = _skew(48, scale, 2)
    w = matrix_exp_fixed(skew)
    assert (w - torch.linalg.matrix_exp(skew)).abs().max().item() <= 1e-12
    assert (w @ w.t() - torch.eye(48, dtype=torch.float64)).abs().max().item() <= 1e-12


def test_squaring_count_is_clamped():
    assert squarings(torch.zeros(1, 4, 4)).item() == 0
    assert squarings(torch.full((1, 4, 4), 1e30)).item() == MAX_SQUARINGS


def test_gradients_match_torch():
    a = torch.randn(12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(3), requires_grad=True)
    g = torch.randn(12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    (ours,) = torch.autograd.grad((matrix_exp_fixed(a - a.t()) * g).sum(), a)
    (theirs,) = torch.autograd.grad((torch.linalg.matrix_exp(a - a.t()) * g).sum(), a)
    assert (ours - theirs).abs().max().item() <= 1e-10
