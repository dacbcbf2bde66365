"""charlstm.data.batching: d2l's consecutive and random sampling, indexable for resume."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
import torch

from charlstm.data.batching import ConsecutiveBatches, RandomBatches, make_batches
from charlstm.errors import CharLSTMError


def d2l_data_iter_consecutive(corpus_indices, batch_size, num_steps):
    """d2l (zh, PyTorch) ``data_iter_consecutive``, as published: X, Y are (N, T)."""
    corpus_indices = torch.tensor(corpus_indices)
    data_len = len(corpus_indices)
    batch_len = data_len // batch_size
    indices = corpus_indices[0 : batch_size * batch_len].view(batch_size, batch_len)
    epoch_size = (batch_len - 1) // num_steps
    for i in range(epoch_size):
        i = i * num_steps
        yield indices[:, i : i + num_steps], indices[:, i + 1 : i + num_steps + 1]


def d2l_data_iter_random(corpus_indices, batch_size, num_steps, order):
    """d2l's ``data_iter_random`` with the shuffled example order passed in."""
    num_examples = (len(corpus_indices) - 1) // num_steps
    epoch_size = num_examples // batch_size
    for i in range(epoch_size):
        batch = order[i * batch_size : (i + 1) * batch_size]
        xs = [corpus_indices[j * num_steps : j * num_steps + num_steps] for j in batch]
        ys = [corpus_indices[j * num_steps + 1 : j * num_steps + 1 + num_steps] for j in batch]
        yield torch.tensor(xs), torch.tensor(ys)


@pytest.mark.parametrize(("n", "batch", "steps"), [(1000, 4, 7), (10_000, 32, 35), (999, 3, 10)])
def test_consecutive_windows_are_d2ls_then_one_tail(n: int, batch: int, steps: int) -> None:
    corpus = list(range(n))
    batches = ConsecutiveBatches(torch.tensor(corpus), batch, steps)
    reference = list(d2l_data_iter_consecutive(corpus, batch, steps))
    for i, (X, Y) in enumerate(reference):
        x, y = batches[i]
        assert torch.equal(x, X.t()) and torch.equal(y, Y.t())  # ours are (T, N)
    assert len(batches) in (len(reference), len(reference) + 1)


@pytest.mark.parametrize(("n", "batch", "steps"), [(1000, 4, 7), (10_000, 32, 35), (1003, 5, 9)])
def test_consecutive_every_character_is_a_target_once_per_epoch(n: int, batch: int, steps: int):
    batches = ConsecutiveBatches(torch.arange(n), batch, steps)
    targets = Counter(int(t) for i in range(len(batches)) for t in batches[i][1].flatten())
    row_len = n // batch
    expected = {p for p in range(batch * row_len) if p % row_len != 0}  # all but row starts
    assert set(targets) == expected
    assert set(targets.values()) == {1}
    assert len(expected) >= n - 2 * batch  # at most N row starts and < N leftover characters


@pytest.mark.parametrize("sampling", ["consecutive", "random"])
def test_positions_locate_every_target(sampling: str) -> None:
    indices = torch.randint(0, 50, (1003,))
    batches = make_batches(indices, 5, 9, sampling, seed=4)
    batches.set_epoch(2)
    for i in range(len(batches)):
        _, y = batches[i]
        assert torch.equal(indices[batches.positions(i)], y)


def test_consecutive_rows_continue_across_batches() -> None:
    batches = ConsecutiveBatches(torch.arange(500), 4, 10)
    x0, _ = batches[0]
    x1, _ = batches[1]
    assert torch.equal(x1[0], x0[-1] + 1)  # each column resumes where it stopped


def test_random_windows_match_d2l_for_the_same_order() -> None:
    corpus = list(range(2000))
    batches = RandomBatches(torch.tensor(corpus), 8, 12, seed=3)
    order = batches.order.tolist()
    for i, (X, Y) in enumerate(d2l_data_iter_random(corpus, 8, 12, order)):
        x, y = batches[i]
        assert torch.equal(x, X.t()) and torch.equal(y, Y.t())
    assert len(batches) == ((2000 - 1) // 12) // 8


def test_random_order_depends_on_seed_and_epoch_only() -> None:
    data = torch.arange(3000)
    a, b = RandomBatches(data, 4, 10, seed=1), RandomBatches(data, 4, 10, seed=1)
    random.seed(99)
    torch.manual_seed(99)  # the global random state must not matter
    assert torch.equal(a[2][0], b[2][0])
    a.set_epoch(1)
    assert not torch.equal(a.order, b.order)
    b.set_epoch(1)
    assert torch.equal(a.order, b.order)
    assert sorted(a.order.tolist()) == list(range(a.num_examples))


@pytest.mark.parametrize("sampling", ["consecutive", "random"])
def test_too_short_corpus_is_a_clear_error(sampling: str) -> None:
    with pytest.raises(CharLSTMError, match="too short: 100 characters.*needs at least 1152"):
        make_batches(torch.arange(100), 32, 35, sampling)


def test_unknown_sampling() -> None:
    with pytest.raises(CharLSTMError, match="^unknown sampling"):
        make_batches(torch.arange(1000), 2, 5, "shuffled")


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.int32, np.int64])
@pytest.mark.parametrize(("n", "batch", "steps"), [(1000, 4, 7), (1003, 5, 9)])
def test_numpy_indices_give_the_tensor_batches(dtype: type, n: int, batch: int, steps: int):
    values = np.random.default_rng(0).integers(0, 60_000, n).astype(dtype)
    tensor = torch.from_numpy(values.astype(np.int64))
    for sampling in ("consecutive", "random"):
        ours = make_batches(values, batch, steps, sampling, seed=2)
        theirs = make_batches(tensor, batch, steps, sampling, seed=2)
        assert len(ours) == len(theirs)
        for i in range(len(ours)):
            (x, y), (tx, ty) = ours[i], theirs[i]
            assert x.dtype == y.dtype == torch.int64
            assert torch.equal(x, tx) and torch.equal(y, ty)
            assert torch.equal(ours.positions(i), theirs.positions(i))
    ConsecutiveBatches(values, batch, steps)[0][0][0, 0] = -1  # a copy: the array is untouched
    assert values[0] == tensor[0]


def test_consecutive_view_of_a_numpy_array_is_not_a_copy():
    values = np.arange(1000, dtype=np.uint16)
    assert np.shares_memory(ConsecutiveBatches(values, 4, 7).rows, values)


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_row_shares_of_the_ranks_make_the_whole_batch(world_size: int):
    indices = torch.arange(10_000)
    whole = ConsecutiveBatches(indices, 8, 35)
    shares = [ConsecutiveBatches(indices, 8, 35, rank, world_size) for rank in range(world_size)]
    assert all(len(share) == len(whole) for share in shares)
    for i in range(len(whole)):
        x, y = whole[i]
        assert torch.equal(torch.cat([share[i][0] for share in shares], 1), x)
        assert torch.equal(torch.cat([share[i][1] for share in shares], 1), y)
        positions = torch.cat([share.positions(i) for share in shares], 1)
        assert torch.equal(positions, whole.positions(i)) and torch.equal(indices[positions], y)
    assert shares[-1][0][0].shape == (35, 8 // world_size)


def test_row_shares_need_a_batch_the_ranks_divide():
    with pytest.raises(CharLSTMError, match="^batch_size 8 is not a multiple of the 3 processes"):
        ConsecutiveBatches(torch.arange(1000), 8, 7, 0, 3)


@pytest.mark.parametrize(("rank", "world_size"), [(2, 2), (-1, 2), (0, 0)])
def test_a_rank_outside_the_world_is_a_bug(rank: int, world_size: int):
    with pytest.raises(ValueError, match="no rank"):
        ConsecutiveBatches(torch.arange(1000), 8, 7, rank, world_size)
