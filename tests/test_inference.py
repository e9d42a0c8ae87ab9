"""The shared inference path: tiling on the model's grid, blending, channel adaptation."""

import pytest
import torch

from irae_cli.errors import IraeError
from irae_cli.inference import Restorer, blend_ramp, tile_starts
from irae_cli.model import create_model
from irae_cli.tasks import get_task


@pytest.fixture(scope="module")
def model(photos):
    torch.manual_seed(0)
    m = create_model("tiny").eval()
    m.initialize(photos + 0.1 * torch.randn_like(photos), photos)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # make the couplings do real, spatially varying work
        for name, p in m.named_parameters():
            if "conv3" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return m


def test_tiles_stay_on_the_model_grid_and_blend(model, photos):
    y = photos[:1, :, 1:127, 2:125]  # 126 x 123: not a multiple of the model's size multiple

    def run(**kw):
        return Restorer(model, get_task("denoise"), device="cpu", dtype="fp32", **kw)(y)

    whole = run(tile=0)
    tiled = {ov: run(tile=64, tile_overlap=ov) for ov in (0, 16, 17)}
    assert all(t.shape == y.shape for t in tiled.values())
    # 17 is rounded up to the grid (the model's size multiple is 4), as is every tile start.
    assert torch.equal(tiled[17], run(tile=64, tile_overlap=20))
    err = {ov: (t - whole).abs().mean().item() for ov, t in tiled.items()}
    change = (whole - y).abs().mean().item()
    # Blending the overlaps brings tiles closer to the whole-image result, and what is
    # left is small beside what the model changes (this random model sees far).
    assert err[16] < 0.7 * err[0]
    assert err[16] < 0.1 * change


def test_self_ensemble_is_the_mean_over_the_eight_flips_and_turns(model, photos):
    y = photos[:2, :, 3:123, 0:100]  # not square: quarter turns swap the sides (both multiples of 4: no padding)
    views = []
    for k in range(4):
        for mirror in (False, True):
            t = torch.rot90(y, k, (2, 3))
            t = t.flip(3) if mirror else t
            with torch.no_grad():
                r = model(t)
            r = r.flip(3) if mirror else r
            views.append(torch.rot90(r, -k, (2, 3)))
    expected = torch.stack(views).mean(0).clamp(0, 1)  # the mean first, then the clamp every restore applies
    assert (views[0] - views[3]).abs().max() > 1e-3  # the model is not symmetric: the views differ
    got = Restorer(model, get_task("denoise"), device="cpu", dtype="fp32", tile=0, self_ensemble=True)(y)
    assert got.shape == y.shape and torch.allclose(got, expected, atol=1e-5)
    tiled = Restorer(model, get_task("denoise"), device="cpu", dtype="fp32", tile=64, self_ensemble=True)(y)
    assert (tiled - got).abs().mean() < 0.1 * (got - y).abs().mean()


def test_tile_starts_cover_and_end_at_the_edge():
    assert tile_starts(100, 100, 8) == [0]
    starts = tile_starts(200, 64, 16)
    assert starts[0] == 0 and starts[-1] == 200 - 64
    assert all(b - a <= 64 - 16 for a, b in zip(starts, starts[1:]))


def test_blend_ramp_positive_and_flat_inside():
    w = blend_ramp(64, 16, True, True)
    assert (w > 0).all() and w[16:48].eq(1).all() and w[0] < w[15]


def test_gray_image_through_rgb_model(model, photos):
    gray = photos[:1].mean(dim=1, keepdim=True)
    out = Restorer(model, get_task("denoise"), device="cpu", dtype="fp32", tile=0)(gray)
    assert out.shape == gray.shape and out.min() >= 0 and out.max() <= 1


def test_bad_tile_options(model):
    with pytest.raises(IraeError, match="too small"):
        Restorer(model, get_task("denoise"), device="cpu", tile=8)
    with pytest.raises(IraeError, match="less than half"):
        Restorer(model, get_task("denoise"), device="cpu", tile=64, tile_overlap=40)


def test_bad_devices_on_a_cpu_machine(model):
    # conftest pins every test not marked cuda to a CPU machine, even where a GPU is present
    with pytest.raises(IraeError, match="CUDA is not available"):
        Restorer(model, get_task("denoise"), device="cuda")
    with pytest.raises(IraeError, match="unsupported device"):
        Restorer(model, get_task("denoise"), device="meta")


def test_bad_devices_on_an_emulated_one_gpu_machine(model, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(IraeError, match="'cuda:1' does not exist; this machine has 1 GPU"):
        Restorer(model, get_task("denoise"), device="cuda:1")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bad_device_index(model):
    n = torch.cuda.device_count()
    with pytest.raises(IraeError, match=f"does not exist; this machine has {n} GPU"):
        Restorer(model, get_task("denoise"), device=f"cuda:{n}")


class OomAbove(torch.nn.Module):
    """Wraps a model; raises the CUDA out-of-memory error above a batch or a side, like a full card."""

    def __init__(self, inner, max_batch=None, max_side=None):
        super().__init__()
        self.inner, self.max_batch, self.max_side = inner, max_batch, max_side
        self.config, self.size_multiple = inner.config, inner.size_multiple
        self.calls, self.failed, self.alive = 0, 0, []

    def forward(self, x):
        import weakref

        self.calls += 1
        held = torch.empty(1 << 16)  # what a failed attempt holds until its traceback is gone
        self.alive.append(weakref.ref(held))
        if (self.max_batch and x.shape[0] > self.max_batch) or (self.max_side and max(x.shape[-2:]) > self.max_side):
            self.failed += 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (emulated)")
        return self.inner(x)


def test_oom_halving_is_remembered_and_frees_after_the_except(model, photos, monkeypatch):
    import sys

    fake = OomAbove(model, max_batch=2)
    r = Restorer(fake, get_task("denoise"), device="cpu", dtype="fp32", tile=0, batch_size=8)
    freed = []

    def free():  # the failed attempt must be gone by the time the cache is emptied
        freed.append((sys.exc_info()[0] is None, all(ref() is None for ref in fake.alive[:-1])))
    monkeypatch.setattr(r, "_free_device_memory", free)
    batch = photos[:, :, :64, :64].repeat(3, 1, 1, 1)[:8]  # 8 images
    whole = Restorer(model, get_task("denoise"), device="cpu", dtype="fp32", tile=0, folded=False)(batch)
    outs = [r(batch) for _ in range(2)]  # 16 images in two calls
    assert all(torch.allclose(o, whole, atol=1e-6) for o in outs)
    # 8 -> 4 -> 2 fail once each, then every call runs batches of 2: 16 useful images in 8 calls
    assert fake.failed == 2 and fake.calls == 2 + 16 // 2, (fake.failed, fake.calls)
    assert r.batch_size == 2 and r.stats.oom_retries == 2
    assert freed == [(True, True), (True, True)]


def test_oom_tile_halving_is_remembered(model, photos):
    fake = OomAbove(model, max_side=64)
    r = Restorer(fake, get_task("denoise"), device="cpu", dtype="fp32", tile=0, tile_overlap=8, batch_size=16)
    for _ in range(3):
        y = r(photos[:1])  # 128 px: fails whole, then runs in 64 px tiles
        assert y.shape == photos[:1].shape
    assert fake.failed == 1 and r.tile == 64 and r.stats.oom_retries == 1
    assert "tile halved to 64" in r.stats.notes[0]


@pytest.mark.parametrize("task, grid", [("jpeg", 16), ("denoise", 1)])
def test_self_ensemble_views_keep_the_task_grid_at_the_origin(model, photos, monkeypatch, task, grid):
    y = photos[:1, :, :93, :117]  # off JPEG's 16-pixel grid both ways
    seen = []

    def identity(self, x, levels=None):
        seen.append(x.clone())
        return x

    monkeypatch.setattr(Restorer, "_restore_same_size", identity)
    got = Restorer(model, get_task(task), device="cpu", dtype="fp32", tile=0, self_ensemble=True)(y)
    assert len(seen) == 8 and torch.allclose(got, y, atol=1e-6)
    assert all(v.shape[-2] % grid == 0 and v.shape[-1] % grid == 0 for v in seen)
    # Undoing a view's flip and turn gives back the image itself at the origin: its padding lies past the
    # bottom-right edge, so every block edge of the original stays on the grid in every view.
    k, mirror = 1, True
    view = seen[2 * k + mirror]
    back = torch.rot90(view.flip(3) if mirror else view, -k, (2, 3))
    assert torch.equal(back[..., :93, :117], y)
    if grid == 1:
        assert seen[0].shape[-2:] == y.shape[-2:]
