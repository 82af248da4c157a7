"""The grid task (lm.data.tasks.GridTask) and Task.target_slots for every task."""

import numpy as np
import pytest
import torch

from helpers import grid_reference
from lm.data.tasks import GRID_OPS, NUM_SPECIALS, TASKS, GridTask, make_task, task_from_state


def as_array(task: GridTask, symbols: list[int]) -> np.ndarray:
    """Symbols -> 2D array, split at separators without lm.data.tasks' own helpers."""
    text = "".join("/" if s == task.sep else str(s) for s in symbols)
    return np.array([[int(ch) for ch in row] for row in text.split("/")])


@pytest.mark.parametrize("op", GRID_OPS)
def test_ops_match_numpy_on_random_grids(op):
    task = make_task("grid", 5, grid_op=op)
    g = torch.Generator().manual_seed(1)
    rng = np.random.default_rng(0)
    shapes = [(1, 1), (1, 6), (6, 1), (2, 3), (3, 2)] + [tuple(rng.integers(1, 8, 2)) for _ in range(200)]
    for h, w in shapes:
        grid = rng.integers(0, 5, (h, w)) * rng.integers(0, 2, (h, w))  # about half background
        out = task.transform(grid.tolist())
        assert np.array_equal(np.array(out), grid_reference(op, grid)), (op, grid)
    for src, tgt in task.examples(300, 1, 7, g):  # and through the sampling path, as ids
        grid = as_array(task, task.from_ids(src))
        assert np.array_equal(as_array(task, task.from_ids(tgt)), grid_reference(op, grid))


def test_gravity_hand_example():
    task = GridTask(10, "gravity")
    assert task.render(task.flatten(task.transform(task.rows(task.parse("102/030/400/005"))))) == "000/000/102/435"


def test_layout_and_vocab():
    task = GridTask(10, "rotate")
    assert task.sep == 10 and task.vocab_size == NUM_SPECIALS + 11
    src = task.parse("012/340/567")
    assert src == [0, 1, 2, 10, 3, 4, 0, 10, 5, 6, 7] and len(src) == 11
    assert task.max_lengths(3) == (11, 12)
    assert max(task.max_lengths(3)) >= max(len(s) for s, t in task.examples(200, 1, 3, torch.Generator().manual_seed(0)))


def test_examples_deterministic_and_cover_sides():
    task = GridTask(4, "flip")
    pairs = task.examples(400, 2, 5, torch.Generator().manual_seed(7))
    assert pairs == task.examples(400, 2, 5, torch.Generator().manual_seed(7))
    assert pairs != task.examples(400, 2, 5, torch.Generator().manual_seed(8))
    shapes = [task.shape(task.from_ids(src)) for src, _ in pairs]
    assert {h for h, _ in shapes} == set(range(2, 6)) and {w for _, w in shapes} == set(range(2, 6))
    assert any(h != w for h, w in shapes) and any(h == w for h, w in shapes)
    cells = [s for src, _ in pairs for s in task.from_ids(src) if s != task.sep]
    assert set(cells) == {0, 1, 2, 3}
    assert 0.4 < cells.count(0) / len(cells) < 0.6  # background with probability 1/2
    with pytest.raises(ValueError, match="at least 1"):
        task.examples(1, 0, 2, torch.Generator().manual_seed(0))


def test_pair_longer_side_is_length():
    task = GridTask(3, "rotate")
    g = torch.Generator().manual_seed(3)
    shapes = [task.shape(task.pair(4, g)[0]) for _ in range(200)]
    assert all(max(s) == 4 for s in shapes)
    assert {min(s) for s in shapes} == {1, 2, 3, 4} and {h for h, _ in shapes} == {1, 2, 3, 4}
    assert task.side(task.parse("01/10/11")) == 3


def test_parse_render_round_trip_and_errors():
    task = GridTask(8, "transpose")
    for text in ["0", "7", "012/340/567", "01234", "0/1/2", " 01 2 / 3 4 0 "]:
        assert task.render(task.parse(text)) == text.replace(" ", "")
    g = torch.Generator().manual_seed(0)
    for src, _ in task.examples(50, 1, 6, g):
        symbols = task.from_ids(src)
        assert task.parse(task.render(symbols)) == symbols
    assert task.render([1, task.sep, 2, 3, task.sep, task.sep]) == "1/23//"  # ragged model output
    with pytest.raises(ValueError, match=r"'010/110': a rectangle.*row lengths: 3, 2$"):
        task.parse("012/34")
    with pytest.raises(ValueError, match="row lengths: 2, 0"):
        task.parse("01/")
    with pytest.raises(ValueError, match="row lengths: 0"):
        task.parse("  ")
    with pytest.raises(ValueError, match=r"digits 0\.\.7 .*not colours: 8 a$"):
        task.parse("01a/128")
    with pytest.raises(ValueError, match="'010/110'"):
        task.parse("0,1/1,0")


@pytest.mark.parametrize("name,op", [("copy", None), ("reverse", None), ("sort", None), ("add", None)]
                         + [("grid", op) for op in GRID_OPS])
def test_target_slots_fit_generated_targets(name, op):
    task = make_task(name, 10, max_len=6, grid_op=op or "rotate")
    for src, tgt in task.examples(300, 1, 6, torch.Generator().manual_seed(0)):
        assert task.target_slots(task.from_ids(src)) == len(tgt) + 1  # BOS + target = target + EOS
    if name == "grid":
        for src, tgt in task.examples(20, 1, 6, torch.Generator().manual_seed(1)):
            assert len(task.target_coords(task.from_ids(src))) == len(tgt) + 1
            assert len(task.source_coords(task.from_ids(src))) == len(src)


def test_coords_hand_checked_rotate_2x3():
    task = GridTask(10, "rotate")
    src = task.parse("123/456")
    assert task.render(task.flatten(task.transform(task.rows(src)))) == "41/52/63"
    assert task.source_coords(src) == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2)]
    assert task.target_slots(src) == 9
    # decoder inputs BOS 4 1 / 5 2 / 6 3 predict 4 1 / 5 2 / 6 3 EOS
    assert task.target_coords(src) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]
    flip = GridTask(10, "flip")
    assert flip.target_coords(src) == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2), (1, 3)]


def test_make_task_errors_and_state_round_trip():
    assert "grid" in TASKS
    with pytest.raises(ValueError, match="rotate, transpose, flip, gravity"):
        make_task("grid", 10, grid_op="spin")
    with pytest.raises(ValueError, match="num_symbols 11"):
        make_task("grid", 11)
    with pytest.raises(ValueError, match="num_symbols 1 "):
        make_task("grid", 1)
    assert make_task("copy", 10, grid_op="spin").name == "copy"  # other tasks ignore it
    for op in GRID_OPS:
        task = make_task("grid", 6, max_len=4, grid_op=op)
        state = task.state()
        assert state == {"kind": "task", "task": "grid", "num_symbols": 6, "grid_op": op}
        again = task_from_state(state)
        assert isinstance(again, GridTask) and again.op == op and again.num_symbols == 6
    assert task_from_state({"kind": "task", "task": "grid", "num_symbols": 3}).op == "rotate"
    assert task_from_state(make_task("add", 10, max_len=5).state()).width == 5
