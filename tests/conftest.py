import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

DATA = Path(__file__).parent / "data"
RGB_NAMES = ["astronaut_128.png", "coffee_128.png", "chelsea_128.png"]

# The suite is a CPU suite that must pass on a GPU machine too: every test sees a CPU machine
# (torch.cuda.is_available() is False in-process, CUDA_VISIBLE_DEVICES="" for the `irae`
# subprocesses) unless it is marked `cuda` (needs a GPU, skipped without one) or `sees_gpu`
# (leaves a GPU visible and pins its own --device). Asking once here, before anything changes
# the environment, fixes this process's real answer.
HAS_CUDA = torch.cuda.is_available()
# Under pytest-xdist (`-n auto`: one worker per core) each worker computes on one thread: workers with
# torch's default of one thread per core would oversubscribe the machine many times over.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
_real_is_available = torch.cuda.is_available
_ORIGINAL_VISIBLE = os.environ.get("CUDA_VISIBLE_DEVICES")


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped without one); sees the real device")
    config.addinivalue_line("markers", "sees_gpu: runs anywhere, with a present GPU left visible "
                                       "(the test pins its own --device)")
    config.addinivalue_line("markers", "torchrun: starts a torchrun job of several processes on this machine "
                                       "(gloo over local TCP ports, --device cpu); about 10 s each")
    config.addinivalue_line("markers", "slow: trains, starts torchrun, builds a package or sends signals; "
                                       "left out by everyday `pytest -m \"not slow\"`, run by the full suite")


def pytest_collection_modifyitems(config, items):
    for item in items:  # a torchrun job is slow by nature: two processes, each importing torch
        if item.get_closest_marker("torchrun"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def _cpu_machine():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.cuda, "is_available", lambda: False)
        mp.setenv("CUDA_VISIBLE_DEVICES", "")
        # Outputs are compared with in-process torch runs: the suite pins what --backend auto picks, so a
        # CPU without native bf16 does not move it onto ONNX Runtime (tests/test_onnx.py asks for it).
        mp.setenv("IRAE_BACKEND", "torch")
        yield


@pytest.fixture(autouse=True)
def _gpu_where_marked(request, monkeypatch):
    if request.node.get_closest_marker("cuda") or request.node.get_closest_marker("sees_gpu"):
        monkeypatch.setattr(torch.cuda, "is_available", _real_is_available)
        if _ORIGINAL_VISIBLE is None:
            monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        else:
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", _ORIGINAL_VISIBLE)
    yield



def load_rgb(name: str) -> torch.Tensor:
    arr = np.asarray(Image.open(DATA / name).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


@pytest.fixture(scope="session")
def photos() -> torch.Tensor:
    """The three 128x128 RGB test photos as a (3, 3, 128, 128) float batch in [0, 1]."""
    return torch.stack([load_rgb(n) for n in RGB_NAMES])


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory) -> Path:
    """A folder of four 128x128 test photos (three RGB, one grayscale) to train on; read it, never write."""
    import shutil

    root = tmp_path_factory.mktemp("photo_folder")
    for name in (*RGB_NAMES, "camera_128_gray.png"):
        shutil.copy(DATA / name, root / name)
    return root
