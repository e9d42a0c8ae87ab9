"""The IRAE core: invertible in practice (fp32) and in exact arithmetic (float64), before and after training."""

import pytest
import torch

from irae_cli.model import create_model, parameter_count
from irae_cli.model.flows import ActNorm

SIGMA = 25 / 255


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def noisy(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return x + torch.randn(x.shape, generator=g) * SIGMA


def randomize_couplings(model, scale, seed=0):
    """Give the zero-initialised last coupling layers random weights so the flows do real work."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "conv3" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def train_briefly(model, photos, steps, patch=32, batch=16, seed=0):
    """A plain L1 denoising loop on random patches of real photos (sigma 25, Adam 1e-3)."""
    g = torch.Generator().manual_seed(seed)

    def sample():
        i = torch.randint(0, photos.shape[0], (batch,), generator=g)
        ys = torch.randint(0, photos.shape[2] - patch + 1, (batch,), generator=g)
        xs = torch.randint(0, photos.shape[3] - patch + 1, (batch,), generator=g)
        clean = torch.stack([photos[a, :, b:b + patch, c:c + patch] for a, b, c in zip(i, ys, xs)])
        return clean + torch.randn(clean.shape, generator=g) * SIGMA, clean

    y, x = sample()
    model.initialize(y, x)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    losses = []
    for _ in range(steps):
        y, x = sample()
        loss = (model(y) - x).abs().mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10)
        opt.step()
        losses.append(loss.item())
    return model.eval(), losses


@pytest.fixture(scope="module")
def trained_tiny(photos):
    torch.manual_seed(0)
    # 120 steps of 8 patches: the loss falls to ~40 % and the weights are far from their start, at a
    # twentieth of the cost of a longer run
    return train_briefly(create_model("tiny"), photos, steps=120, batch=8)


def test_paper_denoise_parameter_count_matches_reference():
    assert abs(parameter_count(create_model("paper-denoise")) - 1_301_504) / 1_301_504 < 0.01


def test_paper_denoise_round_trip_on_real_photos(photos):
    model = create_model("paper-denoise").eval()
    y = noisy(photos)
    model.initialize(y, photos)
    randomize_couplings(model, scale=0.003)
    with torch.no_grad():
        out = model(y)
        assert rel_err(out, y) > 1e-2  # the map is far from the identity
        assert rel_err(model.inverse(out), y) <= 1e-5


@pytest.mark.parametrize("batch", [1, 5])
def test_round_trip_random_init_fp32(batch):
    model = create_model("tiny").eval()
    g = torch.Generator().manual_seed(1)
    y = torch.rand(batch, 3, 32, 48, generator=g)
    model.initialize(y, y)
    randomize_couplings(model, scale=0.05)
    with torch.no_grad():
        assert rel_err(model.inverse(model(y)), y) <= 1e-5


def test_training_lowers_loss_and_stays_invertible(trained_tiny, photos):
    model, losses = trained_tiny
    assert sum(losses[-30:]) / 30 < 0.8 * sum(losses[:30]) / 30
    y = noisy(photos[:, :, :64, :64], seed=3)
    with torch.no_grad():
        y8 = (y.clamp(0, 1) * 255).round() / 255  # an 8-bit input, as every file a user has
        back = model.inverse(model(y8))
        assert torch.equal((back * 255).round(), y8 * 255)  # fp32: the 8-bit input comes back exactly
        assert rel_err(back, y8) <= 1e-4
        m64 = create_model("tiny").double()
        m64.load_state_dict(model.state_dict())
        y64 = y.double()
        assert rel_err(m64.inverse(m64(y64)), y64) <= 1e-9  # float64: mathematically exact


def test_trained_1x1_convs_stay_orthogonal(trained_tiny):
    model, _ = trained_tiny
    conds = model.condition_numbers()
    assert len(conds) == 2 * 2 * 2  # two flows x two levels x K=2
    assert max(conds) < 1 + 1e-9


@pytest.mark.parametrize("shape", [(1, 3, 67, 45), (5, 3, 33, 17), (2, 3, 1, 1), (1, 1, 16, 16)])
def test_any_size_and_batch(shape):
    channels = shape[1]
    model = create_model("tiny", channels=channels).eval()
    y = torch.rand(*shape)
    model.initialize(torch.rand(2, channels, 16, 16), torch.rand(2, channels, 16, 16))
    with torch.no_grad():
        assert model(y).shape == y.shape
        assert model.inverse(y).shape == y.shape


def test_finite_for_inputs_far_outside_unit_range(trained_tiny):
    model, _ = trained_tiny
    y = torch.randn(2, 3, 32, 32) * 100
    with torch.no_grad():
        assert torch.isfinite(model(y)).all()
        assert torch.isfinite(model.inverse(y)).all()


def test_forward_never_initialises(photos):
    model = create_model("tiny").eval()
    actnorms = [m for m in model.modules() if isinstance(m, ActNorm)]
    with torch.no_grad():
        model(photos)
    assert not any(bool(a.initialized) for a in actnorms)
    assert all(float(a.log_scale.detach().abs().max()) == 0 for a in actnorms)
    model.initialize(noisy(photos), photos)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model(photos * 3 + 1)
        model.inverse(photos)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    with pytest.raises(RuntimeError, match="already initialised"):
        model.initialize(photos, photos)


def test_invconv_cache_follows_parameter_updates():
    model = create_model("tiny").eval()
    conv = model.encoder.invconvs()[0]
    x = torch.rand(1, conv.a.shape[0], 4, 4)
    with torch.no_grad():
        before = conv(x)
        conv.a.add_(0.1)
        after = conv(x)
    assert not torch.allclose(before, after)
    with torch.no_grad():
        assert torch.allclose(conv.inverse(after), x, atol=1e-6)


def test_cnn_comparator_has_at_least_irae_parameters():
    cnn = create_model("cnn")
    assert cnn.invertible is False
    assert parameter_count(cnn) >= parameter_count(create_model("paper-denoise"))
    y = torch.rand(1, 3, 21, 19)
    with torch.no_grad():
        assert cnn(y).shape == y.shape


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model"):
        create_model("nope")


def test_identity_start_returns_the_input_until_trained(photos):
    model = create_model("tiny").eval()
    y = noisy(photos)
    model.initialize(y, photos, start="identity")
    with torch.no_grad():
        assert rel_err(model(y), y) < 1e-6
    data = create_model("tiny").eval()
    data.initialize(y, photos)
    with torch.no_grad():
        assert rel_err(data(y), y) > 1e-2  # the data start scrambles until trained
    with pytest.raises(ValueError, match="unknown start"):
        create_model("tiny").initialize(y, photos, start="zeros")


def test_batched_invconv_weights_match_the_per_module_ones_and_their_gradients():
    from irae_cli.model.flows import batched_invconv_weights

    torch.manual_seed(0)
    model = create_model("small-inpaint").double()  # three channel counts: 12, 24, 48
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    model.initialize(x, x, start="data")

    def loss_and_grads(batched: bool):
        model.zero_grad(set_to_none=True)
        with batched_invconv_weights(model) if batched else torch.enable_grad():
            y = model(x)
            back = model.inverse(y + 1e-3)  # the probe's inverse pass meets the same weights
            loss = y.square().mean() + back.abs().mean()
            loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    from irae_cli.model import flows

    calls = []
    real = flows.matrix_exp_fixed
    try:
        flows.matrix_exp_fixed = lambda m: (calls.append(m.shape), real(m))[1]
        plain, plain_grads = loss_and_grads(False)
        n_plain = len(calls)
        calls.clear()
        batched, batched_grads = loss_and_grads(True)
    finally:
        flows.matrix_exp_fixed = real
    assert torch.allclose(plain, batched, rtol=0, atol=1e-12)
    for a, b in zip(plain_grads, batched_grads):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)
    convs = [m for m in model.modules() if type(m).__name__ == "InvConv1x1"]
    assert n_plain == 2 * len(convs)  # forward and probe, each module
    assert len(calls) == len({c.a.shape[0] for c in convs}) == 3  # one per channel count
    assert all(c._step is None for c in convs)  # nothing outlives the step


def test_docs_preset_table_lists_every_preset_with_its_parameter_count():
    import re
    from pathlib import Path

    from irae_cli.model import PRESETS, create_model, parameter_count

    doc = (Path(__file__).resolve().parent.parent / "docs" / "model.md").read_text()
    rows = dict(re.findall(r"^\| `([\w-]+)` \|[^|]*\| ([\d,]+)", doc, flags=re.M))
    assert set(rows) == set(PRESETS)
    for name, count in rows.items():
        assert int(count.replace(",", "")) == parameter_count(create_model(name)), name
