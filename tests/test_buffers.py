"""Receive buffers are reused only when nothing else holds them (a stored payload is never overwritten)."""

import numpy as np
import pytest
import torch

from dcoord.runtime.buffers import BufferPool

MB = 1 << 20


def test_a_buffer_comes_back_only_when_the_last_holder_drops_it():
    pool = BufferPool(per_shape=4)
    a = pool.take(MB, np.float32)
    b = pool.take(MB, np.float32)
    assert a is not b and pool.allocated == 2
    a_id = id(a)
    del a
    c = pool.take(MB, np.float32)
    assert id(c) == a_id and pool.reused == 1
    d = pool.take(MB, np.float64)  # another dtype is another shelf
    assert d.dtype == np.float64 and d.size == MB


def test_views_tensors_and_memoryviews_keep_a_buffer_in_use():
    pool = BufferPool(per_shape=4)
    for hold in (lambda x: x.reshape(-1)[10:], torch.from_numpy, memoryview, lambda x: {"stored": x}):
        a = pool.take(MB, np.float32)
        held = hold(a)
        first = id(a)
        del a
        assert id(pool.take(MB, np.float32)) != first, hold
        del held


def test_pool_is_bounded_and_small_buffers_are_fresh():
    pool = BufferPool(per_shape=2)
    held = [pool.take(MB, np.float32) for _ in range(5)]
    assert len({id(x) for x in held}) == 5 and pool.allocated == 5
    assert sum(len(v) for v in pool._kept.values()) == 2
    small = [pool.take(16, np.float32) for _ in range(3)]
    assert pool.allocated == 5 and all(s.size == 16 for s in small)


def test_all_finite_finds_every_nan_and_inf_and_survives_overflowing_sums():
    from dcoord.runtime.tensors import all_finite

    for dtype in (np.float32, np.float64):
        a = np.ones(100_000, dtype=dtype)
        assert all_finite(a) and all_finite(a[::2]) and all_finite(np.empty(0, dtype=dtype))
        for bad in (np.nan, np.inf, -np.inf):
            b = a.copy()
            b[77_777] = bad
            assert not all_finite(b) and not all_finite(b[1::2]) and not all_finite(b.copy().reshape(10, -1))
            b.flags.writeable = False
            assert not all_finite(b)
        both = a.copy()
        both[3], both[5] = np.inf, -np.inf  # their sum is NaN, not a cancellation to something finite
        assert not all_finite(both)
        big = np.full(1000, np.finfo(dtype).max / 2, dtype=dtype)  # finite values whose sum overflows
        assert all_finite(big)


def test_grad_vector_backs_every_param_grad_and_rebinds():
    """The coordinator decodes into GradVector's memory: every p.grad must be a view of it, in model order,
    and a p.grad replaced by anyone (zero_grad(set_to_none=True), a user hook) is bound again."""
    from dcoord.runtime.tensors import GradVector

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    gv = GradVector(model)
    flat = gv.array()
    assert flat is not None and flat.dtype == np.float32 and flat.shape == (3 * 4 + 4 + 4 * 2 + 2,)
    flat[:] = np.arange(flat.size, dtype=np.float32)
    want = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert torch.equal(want, torch.arange(flat.size, dtype=torch.float32))
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()  # the optimizer reads the views
    for p, b, g in zip(model.parameters(), before, want.split([p.numel() for p in model.parameters()])):
        assert torch.equal(p.detach(), b - g.view_as(p))
    opt.zero_grad(set_to_none=True)
    again = gv.array()
    assert again is not None and all(p.grad is not None for p in model.parameters())
    again[:] = 7.0
    assert all(bool((p.grad == 7.0).all()) for p in model.parameters())
    mixed = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2).double())
    assert GradVector(mixed).array() is None  # mixed dtypes: the caller copies instead


def test_one_torch_thread_is_restored_even_on_error():
    """The finiteness check runs torch on one thread and must give the caller its setting back."""
    from dcoord.runtime.tensors import all_finite, one_torch_thread

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with one_torch_thread():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), one_torch_thread():
            raise RuntimeError("boom")
        assert torch.get_num_threads() == 2
        assert all_finite(np.ones(10, dtype=np.float32)) and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
