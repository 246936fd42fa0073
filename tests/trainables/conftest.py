from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> str:
    """A tiny GPT-2 base checkpoint, trained for a few steps by base_model."""
    from trainables.base_model import make_base

    out = tmp_path_factory.mktemp("base")
    return make_base(out, size="tiny", steps=5, batch_size=16)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and steadily when other jobs share the CPU."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
