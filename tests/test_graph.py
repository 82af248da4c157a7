"""Task graph (lm.data.graphs, lm.jobs.GraphJob, lm.nn.NodeClassifier): the generators against an independent
breadth-first search and union-find, the mask, message passing one hop per block, text in and out, and the
command-line programs end to end."""

import json
from collections import deque

import numpy as np
import pytest
import torch

from conftest import ROOT
from helpers import cli, metrics
from lm.config import GRAPH_FAMILIES, GRAPH_OPS, ConfigError, load
from lm.data.graphs import IGNORE, Graph, GraphTask
from lm.jobs import GraphJob
from lm.nn import NodeClassifier, make_model


def graph_cfg(*overrides):
    """configs/graph.yaml with overrides, its vocab_size set as a run sets it (from the task)."""
    cfg = load(ROOT / "configs" / "graph.yaml", list(overrides))
    cfg.model.vocab_size = GraphTask.from_config(cfg).vocab_size
    return cfg


def task_of(op="distance", family="mixed", num_symbols=5, max_hops=3, mean_degree=2.0, max_nodes=32):
    return GraphTask(op, num_symbols, max_hops, family, mean_degree, max_nodes)


def edge_list(batch, i):
    """Graph i of a batch as (n, edges), read from the adjacency alone."""
    n = int(batch.real[i].sum())
    a = batch.adjacency[i].numpy()
    return n, [(x, y) for x in range(a.shape[0]) for y in range(x + 1, a.shape[0]) if a[x, y]]


def bfs(n, edges, source):
    """Hop distances from source by a queue (None: unreachable)."""
    neighbours = {v: [] for v in range(n)}
    for a, b in edges:
        neighbours[a].append(b)
        neighbours[b].append(a)
    distance = {source: 0}
    queue = deque([source])
    while queue:
        v = queue.popleft()
        for w in neighbours[v]:
            if w not in distance:
                distance[w] = distance[v] + 1
                queue.append(w)
    return [distance.get(v) for v in range(n)]


def union_find_roots(n, edges):
    parent = list(range(n))

    def find(v):
        while parent[v] != v:
            parent[v] = parent[parent[v]]
            v = parent[v]
        return v

    for a, b in edges:
        parent[find(a)] = find(b)
    return [find(v) for v in range(n)]


@pytest.mark.parametrize("family", GRAPH_FAMILIES)
@pytest.mark.parametrize("op", GRAPH_OPS)
def test_answers_match_an_independent_bfs_and_union_find(op, family):
    task = task_of(op, family, max_hops=3)
    batch = task.draw(300, 1, 14, torch.Generator().manual_seed(3))
    hops_seen = set()
    for i in range(len(batch)):
        n, edges = edge_list(batch, i)
        answers = batch.answers[i, :n].tolist()
        assert batch.answers[i, n:].eq(IGNORE).all() and batch.real[i, :n].all() and not batch.real[i, n:].any()
        if op == "distance":
            sources = (batch.tokens[i] == task.source_token).nonzero().flatten().tolist()
            assert len(sources) == 1
            expected = [task.max_hops if d is None else min(d, task.max_hops) for d in bfs(n, edges, sources[0])]
            hops_seen.update(expected)
        elif op == "component":
            labels = [int(t) - 3 for t in batch.tokens[i, :n]]
            roots = union_find_roots(n, edges)
            expected = [min(labels[w] for w in range(n) if roots[w] == roots[v]) for v in range(n)]
        else:
            expected = [sum(v in e for e in edges) for v in range(n)]
        assert answers == expected, (op, family, i, edges)
    if op == "distance":
        assert hops_seen == set(range(task.max_hops + 1))  # every answer occurs


def test_graphs_are_simple_undirected_and_trees_are_trees():
    for family in GRAPH_FAMILIES:
        batch = task_of(family=family).draw(400, 2, 16, torch.Generator().manual_seed(1))
        a = batch.adjacency
        assert torch.equal(a, a.transpose(1, 2)) and not a.diagonal(dim1=1, dim2=2).any()
        assert not (a & ~(batch.real[:, :, None] & batch.real[:, None, :])).any()  # no edge to padding
    trees = task_of(family="tree").draw(400, 1, 16, torch.Generator().manual_seed(2))
    for i in range(len(trees)):
        n, edges = edge_list(trees, i)
        assert len(edges) == n - 1 and len(set(union_find_roots(n, edges))) == 1  # connected, n - 1 edges
    er = task_of(family="er", mean_degree=3.0).draw(2000, 10, 10, torch.Generator().manual_seed(4))
    mean_degree = er.adjacency.sum().item() / er.real.sum().item()
    assert abs(mean_degree - 3.0) < 0.1  # p = 3 / (n - 1): about 3 neighbours per node
    mixed = task_of(family="mixed").draw(1000, 8, 8, torch.Generator().manual_seed(5))
    connected_with_7_edges = sum(len(edge_list(mixed, i)[1]) == 7 and len(set(union_find_roots(
        *edge_list(mixed, i)))) == 1 for i in range(len(mixed)))
    assert 400 < connected_with_7_edges < 700  # about half are trees (and a few er graphs happen to be)


def test_draws_are_deterministic_and_sizes_cover_the_range():
    task = task_of()
    a, b = (task.draw(200, 3, 9, torch.Generator().manual_seed(6)) for _ in range(2))
    assert all(torch.equal(x, y) for x, y in zip((a.tokens, a.adjacency, a.answers), (b.tokens, b.adjacency, b.answers)))
    assert set(a.real.sum(1).tolist()) == set(range(3, 10)) and a.tokens.size(1) == 9


def test_the_mask_is_the_adjacency_plus_self_loops_and_attention_stays_inside_it():
    cfg = graph_cfg("--num_blocks=2", "--embedding_dim=32")
    batch = GraphTask.from_config(cfg).draw(20, 3, 12, torch.Generator().manual_seed(7))
    N = batch.tokens.size(1)
    expected = batch.adjacency.clone()
    expected[:, torch.arange(N), torch.arange(N)] = True
    assert torch.equal(batch.mask(), expected)
    model = make_model(cfg).eval()
    with torch.no_grad():
        _, maps = model(batch.tokens, batch.mask(), return_weights=True)
    for weights in maps.encoder_self:  # (B, heads, N, N)
        allowed = expected[:, None].expand_as(weights)
        assert (weights[~allowed] == 0).all() and (weights[allowed] > 0).all()
        assert torch.allclose(weights.sum(-1), torch.ones_like(weights.sum(-1)))


@pytest.mark.parametrize("blocks", [1, 2, 3])
def test_a_node_hears_only_nodes_within_one_hop_per_block(blocks):
    """Changing the token of a node farther than `blocks` hops from node v changes nothing of v's output
    (exactly: masked keys get weight 0); changing one `blocks` hops away does change it."""
    torch.manual_seed(0)
    cfg = graph_cfg(f"--num_blocks={blocks}", "--embedding_dim=32")
    model = make_model(cfg).eval()
    path = Graph(8, [(i, i + 1) for i in range(7)], [0] * 8, source=0)  # 0-1-2-...-7
    task = GraphTask.from_config(cfg)
    batch = task.encode(path)
    with torch.no_grad():
        base, _ = model(batch.tokens, batch.mask())
        for far in range(8):
            tokens = batch.tokens.clone()
            tokens[0, far] = task.source_token if tokens[0, far] != task.source_token else 3  # another token
            out, _ = model(tokens, batch.mask())
            changed = (out - base).abs().amax(-1)[0]  # (N,): how much each node's output moved
            for v in range(8):
                if abs(v - far) > blocks:
                    assert changed[v] == 0, (blocks, far, v)
                else:
                    assert changed[v] > 0, (blocks, far, v)


def test_shared_blocks_are_one_block_applied_num_blocks_times():
    cfg = graph_cfg("--num_blocks=4", "--share_blocks=true")
    separate = make_model(graph_cfg("--num_blocks=4"))
    model = make_model(cfg)
    blocks = model.encoder.blocks
    assert len(blocks) == 4 and all(b is blocks[0] for b in blocks)
    block_params = sum(p.numel() for p in blocks[0].parameters())
    assert separate.num_params() - model.num_params() == 3 * block_params
    again = make_model(cfg)
    again.load_state_dict(model.state_dict())  # a checkpoint's weights load back, still shared
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))
    assert all(b is again.encoder.blocks[0] for b in again.encoder.blocks)


def test_text_round_trip_and_answers_of_parsed_graphs():
    for op in GRAPH_OPS:
        task = task_of(op, num_symbols=5)
        batch = task.draw(100, 1, 12, torch.Generator().manual_seed(8))
        for i in range(len(batch)):
            graph = task.graph(batch, i)
            text = task.render(graph)
            assert task.parse(text) == graph, text
            parsed = task.encode(task.parse(text))
            n = graph.num_nodes
            assert torch.equal(parsed.answers[0], batch.answers[i, :n]) and torch.equal(parsed.tokens[0],
                                                                                       batch.tokens[i, :n])


def test_the_documented_example():
    task = task_of("distance", max_hops=3)
    graph = task.parse("0-1 1-2 2-3 3-0 2-4; source 0")
    assert graph == Graph(5, [(0, 1), (0, 3), (1, 2), (2, 3), (2, 4)], [0] * 5, 0)
    answers = task.encode(graph).answers[0].tolist()
    assert answers == [0, 1, 2, 1, 3] and task.render_answers(answers) == "0:0 1:1 2:2 3:1 4:3+"
    assert task.parse("0-1; source 0; nodes 4").num_nodes == 4  # isolated nodes 2 and 3
    assert task.parse("; source 1; nodes 2") == Graph(2, [], [0, 0], 1)  # no edges: nodes says how many
    assert task.encode(task.parse("0-1; source 0; nodes 4")).answers[0].tolist() == [0, 1, 3, 3]
    component = task_of("component", num_symbols=10)
    assert component.encode(component.parse("0-1 1-2 3-4")).answers[0].tolist() == [0, 0, 0, 3, 3]  # labels = ids
    assert component.encode(component.parse("0-1 1-2 3-4; labels 4 2 7 9 5")).answers[0].tolist() == [2, 2, 2, 5, 5]
    degree = task_of("degree")
    assert degree.encode(degree.parse("0-1 1-2 2-3 3-0 2-4 1-0")).answers[0].tolist() == [2, 2, 3, 2, 1]


@pytest.mark.parametrize("op, text, message", [
    ("distance", "", "empty edge list"),
    ("distance", "; nodes 0", "at least one node"),
    ("distance", "  ; source 0", "empty edge list"),
    ("distance", "0-0; source 0", "joins node 0 to itself"),
    ("distance", "0-1 1-2", "needs the source node"),
    ("distance", "0-1 1-2; source 3", "source 3 is not a node of this graph"),
    ("distance", "0-1 1-b; source 0", "must be two node numbers"),
    ("distance", "0-1-2; source 0", "must be two node numbers"),
    ("distance", "0-1; source 0; source 1", "given twice"),
    ("distance", "0-1; source zero", "takes one node number"),
    ("distance", "0-1; root 0", "unknown part 'root 0'"),
    ("distance", "0-40; source 0", "has 41 nodes; this model takes at most 32"),
    ("distance", "0-5; source 0; nodes 3", "node 5 is not one of the 3 nodes"),
    ("distance", "0-1; source 0; labels 1 1", "does not read node labels"),
    ("degree", "0-1; source 0", "has no source node"),
    ("component", "0-1 1-2; labels 1 2", "needs 3 labels"),
    ("component", "0-1; labels 1 9", "not labels: 9"),
    ("component", "0-9", "give each of the 10 nodes a label"),
])
def test_bad_graphs_get_a_clear_message(op, text, message):
    with pytest.raises(ValueError, match=message):
        task_of(op, num_symbols=5).parse(text)


@pytest.mark.parametrize("override, message", [
    ("--pos_encoding=learned", "task graph's nodes have no order"),
    ("--tie_head=true", "set tie_head: false"),
    ("--max_hops=0", "max_hops"),
    ("--mean_degree=-1", "mean_degree"),
    ("--graph_op=cycles", "choose one of: distance, component, degree"),
    ("--graph_family=grid", "choose one of: mixed, er, tree"),
    ("--cross_rope=true", "cross_rope"),
    ("--epochs=1", "epochs"),
])
def test_bad_settings_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load(ROOT / "configs" / "graph.yaml", [override])


def test_block_size_must_hold_the_largest_graph(tmp_path):
    cfg = load(ROOT / "configs" / "graph.yaml", ["--block_size=20", "--held_out_size=10"])
    with pytest.raises(ConfigError, match="block_size: 20 is too small for graphs of up to 32 nodes"):
        GraphJob(cfg, None, tmp_path, lambda e: None)


def test_score_counts_nodes_graphs_and_answers(tmp_path):
    cfg = graph_cfg("--held_out_size=50", "--num_blocks=1", "--embedding_dim=16")
    job = GraphJob(cfg, None, tmp_path, lambda e: None)
    model = make_model(cfg)
    scores = job.score(model, job.held_out, torch.device("cpu"), torch.float32, chunk=7)
    real = job.held_out.real
    assert sum(count for _, count in scores["by_answer"].values()) == int(real.sum())
    with torch.no_grad():
        logits, _ = model.eval()(job.held_out.tokens, job.held_out.mask())
    hit = (logits.argmax(-1) == job.held_out.answers) & real
    assert scores["node_acc"] == pytest.approx(hit.sum().item() / real.sum().item())
    assert scores["exact"] == pytest.approx((hit | ~real).all(1).float().mean().item())
    assert set(scores["by_answer"]) <= set(range(cfg.data.max_hops + 1))
    assert isinstance(model, NodeClassifier) and job.long is not None and job.long.real.sum(1).min() > cfg.data.max_len


def tiny_graph(out, *extra):
    return [f"--out_dir={out}", "--num_blocks=2", "--max_hops=2", "--embedding_dim=32", "--max_len=8",
            "--eval_long_len=12", "--block_size=16", "--held_out_size=200", "--max_iters=300", "--eval_interval=150",
            "--log_interval=50", "--batch_size=32", "--device=cpu", *extra]


@pytest.mark.slow
def test_train_sample_visualize_end_to_end(tmp_path):
    out = tmp_path / "graph"
    run = cli("train.py", "--config", ROOT / "configs" / "graph.yaml",
              *tiny_graph(out, "--keep_every=150", "--logger=tensorboard"))
    assert run.returncode == 0, run.stderr
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert events.Tags()["images"] == ["attention/encoder_self"]  # the graph's attention, at each evaluation
    assert {"val_node_acc", "long_exact"} <= set(events.Tags()["scalars"])
    final = metrics(out)[-1]
    assert final["final"] and final["final_val_exact"] >= 0.9 and final["final_long_exact"] >= 0.8, final
    assert {"final_val_node_acc", "final_long_node_acc", "final_long_loss"} <= set(final)
    # the examples shown at the last evaluation are what sample.py prints for the kept checkpoint
    shown = [line.strip() for line in run.stdout.splitlines() if line.startswith("  ✓") or line.startswith("  ✗")]
    assert shown, run.stdout
    last = shown[-3:]
    for line in last:
        mark, rest = line.split(" ", 1)
        source, prediction = rest.split(" -> ")
        prediction = prediction.split(" (target ")[0]
        sampled = cli("sample.py", "--checkpoint", out / "ckpt" / "step_000300.pt", "--input", source, "--device=cpu")
        assert sampled.returncode == 0, sampled.stderr
        assert sampled.stdout.strip() == prediction
    sampled = cli("sample.py", "--checkpoint", out / "best.pt", "--input", "0-1 1-2 2-3 3-0 2-4; source 0")
    assert sampled.returncode == 0 and sampled.stdout.strip() == "0:0 1:1 2:2+ 3:1 4:2+", sampled.stdout + sampled.stderr
    larger = cli("sample.py", "--checkpoint", out / "best.pt", "--input", "0-1 1-2 2-3 3-4 4-5 5-6 6-7 7-8 8-9; source 0")
    assert larger.returncode == 0 and "10 nodes, more than the 4..8" in larger.stderr
    bad = cli("sample.py", "--checkpoint", out / "best.pt", "--input", "0-1 1-1; source 0")
    assert bad.returncode == 2 and "joins node 1 to itself" in bad.stderr
    missing = cli("sample.py", "--checkpoint", out / "best.pt")
    assert missing.returncode == 2 and "give the graph with --input" in missing.stderr
    viz = tmp_path / "viz"
    drawn = cli("visualize.py", "--checkpoint", out / "best.pt", "--input", "0-1 1-2 2-3 3-0 2-4; source 0",
                "--out", viz, "--device=cpu")
    assert drawn.returncode == 0, drawn.stderr
    assert "-> output '0:0 1:1 2:2+ 3:1 4:2+'" in drawn.stdout
    data = json.loads((viz / "attention.json").read_text())
    assert data["kind"] == "graph" and data["tokens"] == ["0*", "1", "2", "3", "4"]
    mask = np.array(data["mask"], dtype=bool)
    expected = np.eye(5, dtype=bool)
    for a, b in [(0, 1), (1, 2), (2, 3), (3, 0), (2, 4)]:
        expected[a, b] = expected[b, a] = True
    assert (mask == expected).all()
    weights = np.array(data["attentions"]["encoder_self"])  # (layers, heads, 5, 5)
    assert (weights[:, :, ~mask] == 0).all()
    for name in ("encoder_self_layer1_head0.png", "encoder_self_layer1.png", "encoder_self_overview.png",
                 "attention.html"):
        assert (viz / name).stat().st_size > 0
    strip = cli("visualize.py", "--checkpoint", out / "ckpt", "--input", "0-1 1-2; source 0", "--out",
                tmp_path / "strip", "--device=cpu")
    assert strip.returncode == 0 and (tmp_path / "strip" / "encoder_self_layer1_head0_strip.png").exists(), strip.stderr


def test_masked_cells_are_drawn_grey(tmp_path):
    """The heatmap of a graph's attention shows the cells its mask forbids in the MASKED grey, whatever the
    colour scale; an allowed cell never is."""
    from matplotlib.colors import to_rgba

    from lm.inspect import plots
    from lm.inspect.attention_maps import record_graph

    cfg = graph_cfg("--num_blocks=1", "--embedding_dim=16")
    model = make_model(cfg)
    rec = record_graph(model, GraphTask.from_config(cfg), cfg, "0-1 1-2 2-3; source 0", torch.device("cpu"))
    assert rec.mask.tolist() == [[True, True, False, False], [True, True, True, False],
                                 [False, True, True, True], [False, False, True, True]]
    fig = plots.plot_head(rec, "encoder_self", 0, 0, tmp_path / "head.png")
    image = fig.axes[0].images[0]
    rgba = image.to_rgba(image.get_array())  # (4, 4, 4): what each cell is drawn as
    grey = np.array(to_rgba(plots.MASKED))
    assert all(np.allclose(rgba[q, k], grey) == (not rec.mask[q, k]) for q in range(4) for k in range(4))


@pytest.mark.slow
def test_resume_is_exact_and_a_changed_task_is_refused(tmp_path):
    """12 steps straight == 6 steps, then a resume for 6 more (dropout on): same losses and weights; a resume
    that changes what the nodes answer is refused."""
    from lm.checkpoint import load as load_checkpoint, resume_point
    from lm.trainer import train

    def cfg(out, *extra):
        return load(ROOT / "configs" / "graph.yaml", [
            f"--out_dir={out}", "--num_blocks=2", "--embedding_dim=16", "--max_len=6", "--eval_long_len=8",
            "--block_size=8", "--held_out_size=20", "--batch_size=8", "--dropout=0.1", "--eval_interval=4",
            "--warmup_iters=2", "--lr_decay_iters=12", "--log_interval=1", "--show_examples=0", "--device=cpu", *extra])

    straight, split = tmp_path / "straight", tmp_path / "split"
    train(cfg(straight, "--max_iters=12"))
    train(cfg(split, "--max_iters=6"))
    train(cfg(split, "--max_iters=12"), resume=resume_point(True, split))
    losses = lambda d: [(r["step"], r["train_loss"]) for r in metrics(d) if "train_loss" in r]
    assert losses(straight) == losses(split)
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(split / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    with pytest.raises(ConfigError, match="vocabulary differs"):
        train(cfg(split, "--max_iters=16", "--graph_op=degree"), resume=resume_point(True, split))


def test_alike_nodes_cannot_count_their_neighbours_so_degree_labels_them():
    """Attention averages: when every node has the same token, every node's output is the same whatever its
    degree (why graph_op degree gives nodes random labels, lm.data.graphs); with labels, outputs differ."""
    torch.manual_seed(0)
    cfg = graph_cfg("--num_blocks=2", "--embedding_dim=32", "--graph_op=degree", "--num_symbols=8")
    model = make_model(cfg).eval()
    task = GraphTask.from_config(cfg)
    star = Graph(5, [(0, 1), (0, 2), (0, 3), (0, 4), (1, 2)], [0] * 5)  # degrees 4, 2, 2, 1, 1
    alike_batch = task.encode(star)
    star.labels = [0, 1, 2, 3, 4]
    labelled_batch = task.encode(star)
    with torch.no_grad():
        alike, _ = model(alike_batch.tokens, alike_batch.mask())
        labelled, _ = model(labelled_batch.tokens, labelled_batch.mask())
    assert torch.allclose(alike[0], alike[0, :1].expand(5, -1), atol=1e-6)  # one output for every node
    assert not torch.allclose(labelled[0, 0], labelled[0, 3], atol=1e-3)
    assert task.labelled and not GraphTask.from_config(graph_cfg()).labelled  # degree and component; not distance
    drawn = task.draw(200, 8, 8, torch.Generator().manual_seed(0))
    assert len(drawn.tokens.unique()) == 8  # the labels are drawn, all 8 of them


@pytest.mark.slow
def test_two_processes_train_the_graph_model_one_does(tmp_path):
    """torchrun: two processes (each one of the step's two micro-batches, gradients averaged) train the model one
    process trains with grad_accum 2, in float32 with AdamW, up to rounding."""
    import subprocess
    import sys

    from helpers import TIMEOUT, losses
    from lm.checkpoint import load as load_checkpoint

    args = ["--config", ROOT / "configs" / "graph.yaml", "--num_blocks=2", "--embedding_dim=16", "--max_len=6",
            "--eval_long_len=8", "--block_size=8", "--held_out_size=20", "--batch_size=8", "--max_iters=4",
            "--eval_interval=2", "--log_interval=1", "--grad_accum=2", "--dtype=float32", "--device=cpu",
            "--show_examples=0"]
    one = cli("train.py", *args, f"--out_dir={tmp_path / 'one'}")
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(ROOT / "train.py"), *map(str, args), f"--out_dir={tmp_path / 'two'}"],
                         capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT)
    assert two.returncode == 0, two.stderr
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert [s for s, _ in a] == [s for s, _ in b] and [x for _, x in a] == pytest.approx([x for _, x in b], rel=1e-5)
    wa, wb = load_checkpoint(tmp_path / "one" / "last.pt")["model"], load_checkpoint(tmp_path / "two" / "last.pt")["model"]
    assert all(torch.allclose(wa[k], wb[k], rtol=1e-4, atol=1e-6) for k in wa)
    assert metrics(tmp_path / "two")[-1]["world_size"] == 2
