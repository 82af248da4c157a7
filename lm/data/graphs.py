"""Task graph: random graphs whose structure reaches the model only through its attention mask.

A transformer's self-attention is message passing over a fully connected graph; an attention mask
is an adjacency matrix. Here every node of a random graph is one token, the encoder's self-attention
mask is the graph's adjacency matrix plus self-loops (node i attends to itself and its neighbours
only), there are no positions (a graph has no order), and a head labels every node. One block then
moves information one hop, so an answer that depends on nodes d hops away needs d blocks.

Graphs (graph_family) of n nodes, n uniform in [min_len, max_len] (the held-out "long" set: larger):
    er     Erdős–Rényi: each pair of nodes joined with probability mean_degree / (n - 1)
    tree   random recursive tree: the nodes in a random order, each joining a uniformly chosen
           earlier one (connected, n - 1 edges)
    mixed  each graph er or tree, with probability 1/2
Ops (graph_op), each node's answer:
    distance   hop distance to the source node (marked by its token), capped: 0..max_hops, max_hops
               meaning "max_hops or more, or unreachable"
    component  the smallest label in the node's connected component (labels: 0..num_symbols-1)
    degree     its number of neighbours, 0..block_size-1
Tokens: 0 = PAD, 1 = BOS, 2 = EOS (the seq2seq layout; BOS and EOS unused), then the labels, then
SOURCE. With component and degree labels are uniform over num_symbols; with distance every node has
label 0 and the source is the SOURCE token. Degree needs labels: attention averages what it reads, and
over identical nodes an average is the same whatever their number, so a node could not count its
neighbours; with labels it can tell itself from them, and the share of attention left on itself,
e^s / (e^s + deg), carries the count.

Text (sample.py --input, the examples a run shows): an edge list of node numbers 0..n-1, then
optional parts after semicolons, e.g. "0-1 1-2 2-3 3-0 2-4; source 0":
    a-b ...        the edges (undirected; no a-a: every node attends to itself anyway); empty only with
                   "nodes N" (a graph without edges)
    source S       the source node (distance only, and there required)
    labels L0 L1   one label per node (component, degree; default: the node numbers, when they are labels)
    nodes N        the number of nodes (default: the largest node number + 1; more gives isolated nodes)
Answers are written "node:answer" in node order, e.g. "0:0 1:1 2:2 3:1 4:3", a capped distance as "4+".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..config import GRAPH_FAMILIES, GRAPH_OPS  # the names: DataConfig.graph_op's and graph_family's Literals
from .tasks import NUM_SPECIALS, PAD

IGNORE = -100  # the answer of a padding node: no loss, not scored


@dataclass
class Graph:
    """One graph as text gives it: n nodes 0..n-1, undirected edges (a < b, sorted, no repeats), a
    label per node, and the source node (distance) or None."""

    num_nodes: int
    edges: list[tuple[int, int]]
    labels: list[int]
    source: int | None = None


@dataclass
class GraphBatch:
    """Graphs padded to N nodes, as the model takes them:

        tokens     (B, N) long   each node's token (PAD past a graph's nodes)
        adjacency  (B, N, N) bool  adjacency[b, i, j]: nodes i and j are joined (symmetric, no self-loops)
        real       (B, N) bool   True at a graph's nodes
        answers    (B, N) long   each node's right answer (IGNORE at padding)
    """

    tokens: torch.Tensor
    adjacency: torch.Tensor
    real: torch.Tensor
    answers: torch.Tensor

    def __len__(self) -> int:
        return self.tokens.size(0)

    def mask(self) -> torch.Tensor:
        """(B, N, N) bool: the self-attention mask, adjacency plus self-loops (every node, padding too,
        attends to itself, so no row is empty; no real node reaches a padding node)."""
        N = self.tokens.size(1)
        return self.adjacency | torch.eye(N, dtype=torch.bool, device=self.adjacency.device)

    def __getitem__(self, index) -> "GraphBatch":
        """The graphs of a slice, e.g. batch[i : i + 250], as a batch of their own."""
        return GraphBatch(self.tokens[index], self.adjacency[index], self.real[index], self.answers[index])

    def to(self, device) -> "GraphBatch":
        return GraphBatch(*(t.to(device, non_blocking=True) for t in
                            (self.tokens, self.adjacency, self.real, self.answers)))


def recursive_trees(sizes: torch.Tensor, N: int, g: torch.Generator) -> torch.Tensor:
    """(B, N, N) adjacency of one random recursive tree per graph on its first sizes[b] nodes: the nodes
    in a random order o_0, o_1, ..., each o_k (k >= 1) joined to o_j with j uniform in 0..k-1."""
    B = len(sizes)
    real = torch.arange(N)[None] < sizes[:, None]  # (B, N)
    order = torch.argsort(torch.rand(B, N, generator=g) + (~real).float(), dim=1)  # (B, N): real nodes first
    k = torch.arange(N)
    parent_rank = (torch.rand(B, N, generator=g) * k).long()  # (B, N): uniform in 0..k-1 (0 for k = 0)
    child, parent = order[:, 1:], order.gather(1, parent_rank[:, 1:])  # (B, N-1) each
    joined = (k[1:][None] < sizes[:, None])  # (B, N-1): o_k is a node of the graph
    adjacency = torch.zeros(B, N, N, dtype=torch.bool)
    rows = torch.arange(B)[:, None].expand_as(child)
    adjacency[rows[joined], child[joined], parent[joined]] = True
    return adjacency | adjacency.transpose(1, 2)


def erdos_renyi(sizes: torch.Tensor, N: int, mean_degree: float, g: torch.Generator) -> torch.Tensor:
    """(B, N, N) adjacency of one G(n, p) graph per graph on its first n = sizes[b] nodes, each pair
    joined independently with probability p = mean_degree / (n - 1) (at most 1)."""
    B = len(sizes)
    real = torch.arange(N)[None] < sizes[:, None]  # (B, N)
    p = (mean_degree / (sizes - 1).clamp(min=1).float()).clamp(max=1.0)  # (B,)
    joined = torch.triu(torch.rand(B, N, N, generator=g) < p[:, None, None], diagonal=1)  # (B, N, N), i < j
    joined &= real[:, :, None] & real[:, None, :]
    return joined | joined.transpose(1, 2)


def capped_distances(adjacency: torch.Tensor, source: torch.Tensor, max_hops: int) -> torch.Tensor:
    """(B, N) hop distance of every node to source[b], min(d, max_hops) (unreachable: max_hops), by
    breadth-first expansion of the reached set: reached_{h+1} = reached_h or (A reached_h > 0)."""
    B, N, _ = adjacency.shape
    reached = torch.zeros(B, N, dtype=torch.bool)
    reached[torch.arange(B), source] = True
    distance = torch.full((B, N), max_hops, dtype=torch.long)
    distance[reached] = 0
    a = adjacency.float()
    for hop in range(1, max_hops):
        new = ((a @ reached.float()[:, :, None])[:, :, 0] > 0) & ~reached  # (B, N): first reached now
        distance[new] = hop
        reached |= new
    return distance


def component_minima(adjacency: torch.Tensor, labels: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """(B, N) the smallest label of every node's connected component: each node takes the minimum over
    itself and its neighbours until nothing changes (at most N - 1 rounds)."""
    big = torch.iinfo(torch.long).max
    m = torch.where(real, labels, big)  # (B, N)
    for _ in range(adjacency.size(1)):
        neighbours = torch.where(adjacency, m[:, None, :], big).min(dim=2).values  # (B, N)
        new = torch.minimum(m, neighbours)
        if torch.equal(new, m):
            break
        m = new
    return m


class GraphTask:
    """Random graphs and each node's answer (see the module docstring), as token batches and as text."""

    name = "graph"

    def __init__(self, op: str, num_symbols: int, max_hops: int, family: str, mean_degree: float, max_nodes: int):
        if op not in GRAPH_OPS:
            raise ValueError(f"unknown graph op {op!r}; choose one of: {', '.join(GRAPH_OPS)}")
        if family not in GRAPH_FAMILIES:
            raise ValueError(f"unknown graph family {family!r}; choose one of: {', '.join(GRAPH_FAMILIES)}")
        self.op, self.num_symbols, self.max_hops = op, num_symbols, max_hops
        self.family, self.mean_degree, self.max_nodes = family, mean_degree, max_nodes

    @classmethod
    def from_config(cls, cfg) -> "GraphTask":
        d = cfg.data
        return cls(d.graph_op, d.num_symbols, d.max_hops, d.graph_family, d.mean_degree, cfg.model.block_size)

    @classmethod
    def from_state(cls, state: dict) -> "GraphTask":
        return cls(state["graph_op"], state["num_symbols"], state["max_hops"], state["graph_family"],
                   state["mean_degree"], state["max_nodes"])

    def state(self) -> dict:
        return {"kind": "task", "task": self.name, "graph_op": self.op, "num_symbols": self.num_symbols,
                "max_hops": self.max_hops, "graph_family": self.family, "mean_degree": self.mean_degree,
                "max_nodes": self.max_nodes}

    @property
    def labelled(self) -> bool:
        """Whether nodes carry random labels: component reads them; degree needs them to tell a node from its
        neighbours (the module docstring); distance has every node alike but the source."""
        return self.op in ("component", "degree")

    @property
    def source_token(self) -> int:
        return NUM_SPECIALS + self.num_symbols

    @property
    def vocab_size(self) -> int:
        return NUM_SPECIALS + self.num_symbols + 1

    @property
    def num_classes(self) -> int:
        """The head's outputs: distance 0..max_hops, component a label, degree 0..max_nodes-1."""
        return {"distance": self.max_hops + 1, "component": self.num_symbols, "degree": self.max_nodes}[self.op]

    # ---- batches
    def answers(self, adjacency: torch.Tensor, labels: torch.Tensor, real: torch.Tensor,
                source: torch.Tensor) -> torch.Tensor:
        """(B, N) each node's answer under this op, IGNORE at padding."""
        if self.op == "distance":
            out = capped_distances(adjacency, source, self.max_hops)
        elif self.op == "component":
            out = component_minima(adjacency, labels, real)
        else:
            out = adjacency.sum(dim=2)
        return torch.where(real, out, IGNORE)

    def batch(self, adjacency: torch.Tensor, labels: torch.Tensor, real: torch.Tensor,
              source: torch.Tensor) -> GraphBatch:
        """The GraphBatch of graphs given by their (B, N, N) adjacency, (B, N) labels, (B, N) real nodes
        and (B,) source nodes (used by distance only)."""
        tokens = torch.where(real, NUM_SPECIALS + labels, PAD)  # (B, N)
        if self.op == "distance":
            tokens[torch.arange(len(tokens)), source] = self.source_token
        return GraphBatch(tokens, adjacency, real, self.answers(adjacency, labels, real, source))

    def draw(self, count: int, min_nodes: int, max_nodes: int, g: torch.Generator) -> GraphBatch:
        """count random graphs of min_nodes..max_nodes nodes (uniform), padded to max_nodes."""
        N = max_nodes
        sizes = torch.randint(min_nodes, max_nodes + 1, (count,), generator=g)  # (B,)
        real = torch.arange(N)[None] < sizes[:, None]  # (B, N)
        if self.family == "er":
            adjacency = erdos_renyi(sizes, N, self.mean_degree, g)  # (B, N, N)
        elif self.family == "tree":
            adjacency = recursive_trees(sizes, N, g)
        else:  # mixed: both drawn, each graph one of them by a coin flip
            er, tree = erdos_renyi(sizes, N, self.mean_degree, g), recursive_trees(sizes, N, g)
            adjacency = torch.where((torch.rand(count, generator=g) < 0.5)[:, None, None], tree, er)
        source = (torch.rand(count, generator=g) * sizes).long()  # (B,): uniform over each graph's nodes
        labels = torch.randint(self.num_symbols, (count, N), generator=g)
        if not self.labelled:
            labels = torch.zeros_like(labels)
        return self.batch(adjacency, labels, real, source)

    def encode(self, graph: Graph) -> GraphBatch:
        """One Graph (parsed text) as a batch of one."""
        n = graph.num_nodes
        adjacency = torch.zeros(1, n, n, dtype=torch.bool)
        for a, b in graph.edges:
            adjacency[0, a, b] = adjacency[0, b, a] = True
        labels = torch.tensor([graph.labels])
        source = torch.tensor([0 if graph.source is None else graph.source])
        return self.batch(adjacency, labels, torch.ones(1, n, dtype=torch.bool), source)

    def graph(self, batch: GraphBatch, i: int) -> Graph:
        """Graph i of a batch, as text would give it."""
        n = int(batch.real[i].sum())
        a = batch.adjacency[i, :n, :n]
        edges = [(int(x), int(y)) for x, y in torch.nonzero(torch.triu(a, diagonal=1)).tolist()]
        tokens = batch.tokens[i, :n]
        source = None
        if self.op == "distance":
            source = int((tokens == self.source_token).nonzero()[0, 0])
        labels = [0 if t == self.source_token else int(t) - NUM_SPECIALS for t in tokens.tolist()]
        return Graph(n, edges, labels, source)

    # ---- text
    def render(self, graph: Graph) -> str:
        """A Graph as text: "0-1 1-2; source 0", with "; labels ..." (component) and "; nodes N" (when the
        last nodes have no edge), so that parse(render(graph)) == graph."""
        parts = [" ".join(f"{a}-{b}" for a, b in graph.edges)]
        if graph.source is not None:
            parts.append(f"source {graph.source}")
        if self.labelled:
            parts.append("labels " + " ".join(map(str, graph.labels)))
        if not graph.edges or max(max(e) for e in graph.edges) + 1 != graph.num_nodes:
            parts.append(f"nodes {graph.num_nodes}")
        return "; ".join(parts)

    def parse(self, text: str) -> Graph:
        """Text (the module docstring's format) -> a Graph; ValueError naming what is wrong."""
        form = "an edge list like '0-1 1-2 2-3 3-0 2-4; source 0'"
        parts = [p.strip() for p in text.split(";")]
        edge_text, options = parts[0], {}
        for part in parts[1:]:
            key, _, value = part.partition(" ")
            if key not in ("source", "labels", "nodes"):
                raise ValueError(f"input {text!r}: unknown part {part!r}; after the edges come '; source S', "
                                 f"'; labels L0 L1 ...' or '; nodes N'")
            if key in options:
                raise ValueError(f"input {text!r}: '{key}' is given twice")
            options[key] = value.split()
        if not edge_text and "nodes" not in options:
            raise ValueError(f"input {text!r} has an empty edge list; give {form} (a graph without edges: "
                             f"'; nodes N' after the empty list)")
        edges = set()
        for item in edge_text.split():
            m = re.fullmatch(r"(\d+)-(\d+)", item)
            if not m:
                raise ValueError(f"input {text!r}: edge {item!r} must be two node numbers joined by '-', e.g. '0-1'")
            a, b = int(m.group(1)), int(m.group(2))
            if a == b:
                raise ValueError(f"input {text!r}: edge {item!r} joins node {a} to itself; every node already "
                                 f"attends to itself (the mask's self-loops): leave it out")
            edges.add((min(a, b), max(a, b)))
        n = max(max(e) for e in edges) + 1 if edges else 0
        if "nodes" in options:
            declared = _number(text, "nodes", options["nodes"])
            if declared < max(n, 1):
                if not edges:
                    raise ValueError(f"input {text!r}: 'nodes {declared}': a graph needs at least one node")
                raise ValueError(f"input {text!r}: node {n - 1} is not one of the {declared} nodes (0..{declared - 1}) "
                                 f"that 'nodes {declared}' declares")
            n = declared
        if n > self.max_nodes:
            raise ValueError(f"input {text!r} has {n} nodes; this model takes at most {self.max_nodes} (block_size)")
        source = None
        if self.op == "distance":
            if "source" not in options:
                raise ValueError(f"input {text!r}: graph_op distance needs the source node: end the input with "
                                 f"'; source 0' (a node number)")
            source = _number(text, "source", options["source"])
            if source >= n:
                raise ValueError(f"input {text!r}: source {source} is not a node of this graph (nodes 0..{n - 1})")
        elif "source" in options:
            raise ValueError(f"input {text!r}: this model answers graph_op {self.op}, which has no source node; "
                             f"leave out '; source ...'")
        labels = [0] * n
        if self.labelled:
            labels = self._labels(text, options.get("labels"), n)
        elif "labels" in options:
            raise ValueError(f"input {text!r}: graph_op {self.op} does not read node labels; leave out '; labels ...'")
        return Graph(n, sorted(edges), labels, source)

    def _labels(self, text: str, given: list[str] | None, n: int) -> list[int]:
        top = self.num_symbols - 1
        if given is None:
            if n > self.num_symbols:
                raise ValueError(f"input {text!r}: give each of the {n} nodes a label 0..{top} with '; labels ...' "
                                 f"(node numbers serve as labels only up to {top})")
            return list(range(n))
        bad = [x for x in given if not (x.isdigit() and int(x) <= top)]
        if bad or len(given) != n:
            raise ValueError(f"input {text!r}: 'labels' needs {n} labels (one per node), each 0..{top}"
                             + (f"; not labels: {', '.join(bad)}" if bad else f"; it has {len(given)}"))
        return [int(x) for x in given]

    def answer_text(self, answer: int) -> str:
        """One answer as written: a number, a capped distance as "4+"."""
        capped = self.op == "distance" and answer == self.max_hops
        return f"{answer}+" if capped else str(answer)

    def render_answers(self, answers: list[int]) -> str:
        """Each node's answer in node order: "0:0 1:1 2:4+"."""
        return " ".join(f"{i}:{self.answer_text(a)}" for i, a in enumerate(answers))

    def node_texts(self, graph: Graph) -> list[str]:
        """One label per node for the axes of an attention map: its number, "*" for the source, and its
        label (component)."""
        out = []
        for i in range(graph.num_nodes):
            text = f"{i}*" if i == graph.source else str(i)
            out.append(f"{text}={graph.labels[i]}" if self.labelled else text)
        return out


def _number(text: str, key: str, values: list[str]) -> int:
    if len(values) != 1 or not values[0].isdigit():
        raise ValueError(f"input {text!r}: '{key}' takes one node number, e.g. '; {key} 0'; got {' '.join(values)!r}")
    return int(values[0])
