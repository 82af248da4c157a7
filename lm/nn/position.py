"""Positional encodings, chosen by name (``pos_encoding``).

    learned, sinusoidal, none           1D, added to the token embeddings
    rope                                1D, rotates queries and keys of self-attention
    learned_2d, sinusoidal_2d, rope_2d  2D (row, column) of grid-shaped inputs
    randomized                          learned embeddings of randomly spread positions,
                                        for length generalisation (Ruoss et al. 2023)

Positions are integer tensors passed explicitly: (T,) or (B, T) for 1D encodings, (T, 2) or
(B, T, 2) = (row, column) for 2D ones, and (B, T, 2) = (from the start, from the end) for
randomized (from the end = -1: no second channel). ``consecutive(start, T)`` gives a model's
default positions start..start+T-1; 2D encodings have no default (a grid's rows and columns
must come from the task).

Each module offers two things, either of which may be None:
    forward(pos)  -> (..., T, C) vectors added to the token embeddings
    rotation(pos) -> a Rotation applied to queries and keys of self-attention
Cross-attention is not rotated by default: its queries (target) and keys (source) are positions
in two different sequences, so their offset means nothing in general; the decoder learns the
alignment from content (and, with additive encodings, from the positions added to both sides).
Where output and input run side by side (spelling correction: output character t sits near
input character t), ``cross_rope`` rotates them too (CrossRotation): queries by their target
position, keys by their source position, so a score depends on the offset t - s as well and a
near-diagonal alignment is one pattern for every position instead of one per position.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..config import ModelConfig


class Rotation:
    """RoPE (Su et al. 2021) for one set of positions: rotate feature pair (i, i + d/2) of every
    head by angle theta_i(pos), i.e. x' = x cos + rotate_half(x) sin with rotate_half(x1, x2) =
    (-x2, x1). Then <R(m) q, R(n) k> depends on m - n only (offset, not absolute position).

    cos, sin: (T, d) or (B, 1, T, d), broadcastable against (B, nh, T, d) heads.
    """

    def __init__(self, angles: torch.Tensor):
        # angles: (..., T, d/2) -> the same angle for both members of each pair
        angles = torch.cat([angles, angles], dim=-1)  # (..., T, d)
        if angles.dim() == 3:
            angles = angles[:, None]  # (B, 1, T, d): one rotation for every head
        self.cos, self.sin = angles.cos(), angles.sin()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)  # 2 x (B, nh, T, d/2)
        rotated = torch.cat([-x2, x1], dim=-1)  # (B, nh, T, d)
        return (x * self.cos + rotated * self.sin).to(x.dtype)


class CrossRotation:
    """cross_rope: cross-attention's queries rotated by their target positions and its keys by their source
    positions, at RoPE's frequencies theta_i = 10000^(-2i/d), so <R(t) q, R(s) k> depends on t - s."""

    def __init__(self, head_dim: int, target: torch.Tensor, source: torch.Tensor):
        """target: (T,) positions of the queries (decoder inputs); source: (S,) positions of the keys."""
        theta = _frequencies(head_dim // 2).to(target.device)
        self.query = Rotation(target[:, None].float() * theta)  # angles (T, d/2)
        self.key = Rotation(source[:, None].float() * theta)  # angles (S, d/2)


def _frequencies(pairs: int, base: float = 10000.0) -> torch.Tensor:
    """theta_i = base^(-i / pairs), i = 0..pairs-1: the wavelengths of sinusoids and RoPE."""
    return base ** (-torch.arange(pairs, dtype=torch.float32) / pairs)


def _sinusoids(pos: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """(..., T) integer positions -> (..., T, width) with PE[2i] = sin(pos theta_i), PE[2i+1] = cos(pos theta_i),
    theta = _frequencies(width / 2), i.e. theta_i = 10000^(-2i/width) ("Attention Is All You Need", 3.5)."""
    angles = pos[..., None].float() * theta  # (..., T, width/2)
    pe = torch.stack([angles.sin(), angles.cos()], dim=-1)  # (..., T, width/2, 2)
    return pe.flatten(-2)  # (..., T, width): sin, cos interleaved


def _check_range(values: torch.Tensor, low: int, high: int, message: str) -> None:
    """Every value in low..high, or an error naming message. On a GPU (CUDA) without waiting for it, so the
    forward pass never stalls on the check: torch._assert_async fails a later synchronising call (a device-side
    assert, which ends the process's CUDA use). Elsewhere (CPU, mps) a ValueError at once: reading a host
    tensor costs no device sync."""
    if not values.numel():
        return
    if values.device.type == "cuda":
        torch._assert_async(((values >= low) & (values <= high)).all(), message)
    elif int(values.min()) < low or int(values.max()) > high:
        raise ValueError(f"{message}; got {int(values.min())}..{int(values.max())}")


class Positional(nn.Module):
    """Base class: a positional encoding that adds nothing and rotates nothing."""

    name = "none"
    grid = False  # True: positions are (row, column) of a grid
    channels = 1  # 1: positions (T,) or (B, T); 2: pairs (T, 2) or (B, T, 2)
    pair_meaning = ""  # what the pair holds, for error messages
    lowest = 0  # the smallest valid position value
    token_scale = 1.0  # the token embeddings are multiplied by this before the positions are added

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.block_size = cfg.block_size  # every position must be in 0..block_size-1

    def consecutive(self, start: int, length: int, device=None) -> torch.Tensor:
        """Default positions start..start+length-1, shape (T,)."""
        return torch.arange(start, start + length, device=device)

    def check(self, pos: torch.Tensor, length: int) -> None:
        """Raise ValueError unless pos holds positions for `length` tokens in this encoding's layout; each
        must be in 0..block_size-1 (_check_range: a ValueError, or on a GPU a device-side assert)."""
        if pos.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"positions must be an integer tensor, got {pos.dtype}")
        if self.channels == 1:
            shape_ok, layout = pos.dim() in (1, 2) and pos.size(-1) == length, "(T,) or (B, T)"
        else:
            shape_ok = pos.dim() in (2, 3) and pos.size(-1) == 2 and pos.size(-2) == length
            layout = f"(T, 2) or (B, T, 2) {self.pair_meaning}"
        if not shape_ok:
            raise ValueError(f"positions of shape {tuple(pos.shape)} do not fit {length} tokens; "
                             f"pos_encoding {self.name!r} takes {layout}")
        top = self.block_size - 1
        _check_range(pos, self.lowest, top, f"positions must be in 0..{top} (block_size)")

    def forward(self, pos: torch.Tensor) -> torch.Tensor | None:
        return None

    def rotation(self, pos: torch.Tensor) -> Rotation | None:
        return None

    def encode_consecutive(self, start: int, length: int, device=None) -> tuple[torch.Tensor | None, Rotation | None]:
        """forward and rotation of the default positions start..start+length-1 (consecutive)."""
        pos = self.consecutive(start, length, device)
        return self(pos), self.rotation(pos)


class LearnedPositional(Positional):
    """A trained vector per position, as in GPT: PE[pos] = W_pos[pos]."""

    name = "learned"

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.weight = nn.Parameter(torch.zeros(cfg.block_size, cfg.embedding_dim))
        nn.init.normal_(self.weight, mean=0.0, std=0.02)

    def forward(self, pos):
        return self.weight[pos]  # (..., T, C)

    def encode_consecutive(self, start, length, device=None):
        # the rows weight[arange(start, start + length)] gathers, as a view: no position tensor, no gather
        return self.weight[start : start + length], None  # (T, C)


class SinusoidalPositional(Positional):
    """Fixed encodings of "Attention Is All You Need" (section 3.5), with the paper's scaling of the
    token embeddings by sqrt(d_model): h_0 = sqrt(C) E[token] + PE[pos],

        PE[pos, 2i] = sin(pos / 10000^(2i/C)),  PE[pos, 2i+1] = cos(pos / 10000^(2i/C)).

    Without the scaling, unit-size sinusoids swamp embeddings initialised at std 0.02.
    """

    name = "sinusoidal"

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        assert cfg.embedding_dim % 2 == 0, "lm.config.validate checks the width"
        self.register_buffer("theta", _frequencies(cfg.embedding_dim // 2), persistent=False)  # (C/2,)
        self.token_scale = math.sqrt(cfg.embedding_dim)

    def forward(self, pos):
        return _sinusoids(pos, self.theta)  # (..., T, C)


class RotaryPositional(Positional):
    """RoPE (Su et al. 2021): nothing is added to the embeddings; self-attention rotates each head's
    queries and keys by angle pos * theta_i on feature pair i, theta_i = 10000^(-2i/d)."""

    name = "rope"

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        head_dim = cfg.embedding_dim // cfg.num_heads
        assert head_dim % 2 == 0, "lm.config.validate checks the head width"
        self.register_buffer("theta", _frequencies(head_dim // 2), persistent=False)  # (d/2,)

    def rotation(self, pos):
        return Rotation(pos[..., None].float() * self.theta)  # angles (..., T, d/2)


class GridPositional(Positional):
    """Base of the 2D encodings: positions are (row, column) pairs, and there is no default."""

    grid = True
    channels = 2
    pair_meaning = "of (row, column)"

    def consecutive(self, start, length, device=None):
        raise ValueError(f"pos_encoding {self.name!r} needs (row, column) positions from a grid task: pass pos "
                         f"of shape (B, T, 2)")


class Learned2DPositional(GridPositional):
    """A trained vector per row and per column, side by side: PE[r, c] = [W_row[r], W_col[c]]
    (half of the channels encode the row, half the column)."""

    name = "learned_2d"

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        assert cfg.embedding_dim % 2 == 0, "lm.config.validate checks the width"
        self.row = nn.Parameter(torch.zeros(cfg.block_size, cfg.embedding_dim // 2))
        self.col = nn.Parameter(torch.zeros(cfg.block_size, cfg.embedding_dim // 2))
        nn.init.normal_(self.row, mean=0.0, std=0.02)
        nn.init.normal_(self.col, mean=0.0, std=0.02)

    def forward(self, pos):
        return torch.cat([self.row[pos[..., 0]], self.col[pos[..., 1]]], dim=-1)  # (..., T, C)


class Sinusoidal2DPositional(GridPositional):
    """Sinusoids of the row in the first C/2 channels and of the column in the last C/2, each as in
    the 1D encoding of width C/2; token embeddings scaled by sqrt(C) as in SinusoidalPositional."""

    name = "sinusoidal_2d"

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        assert cfg.embedding_dim % 4 == 0, "lm.config.validate checks the width"
        self.register_buffer("theta", _frequencies(cfg.embedding_dim // 4), persistent=False)  # (C/4,) per axis
        self.token_scale = math.sqrt(cfg.embedding_dim)

    def forward(self, pos):
        return torch.cat([_sinusoids(pos[..., 0], self.theta), _sinusoids(pos[..., 1], self.theta)], dim=-1)


class Rotary2DPositional(GridPositional):
    """Axial RoPE: of each head's d/2 rotation pairs, the first d/4 turn with the row and the last d/4
    with the column, each at frequencies theta_i = 10000^(-i / (d/4)). The score of two tokens then
    depends only on their (row, column) offset."""

    name = "rope_2d"

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        head_dim = cfg.embedding_dim // cfg.num_heads
        assert head_dim % 4 == 0, "lm.config.validate checks the head width"
        self.register_buffer("theta", _frequencies(head_dim // 4), persistent=False)  # (d/4,)

    def rotation(self, pos):
        rows = pos[..., 0, None].float() * self.theta  # (..., T, d/4)
        cols = pos[..., 1, None].float() * self.theta  # (..., T, d/4)
        return Rotation(torch.cat([rows, cols], dim=-1))  # angles (..., T, d/2)


class RandomizedPositional(Positional):
    """Randomized positional encodings (Ruoss et al. 2023), made to extrapolate in length.

    Two learned tables of block_size vectors: one indexed by a token's position counted from the
    start, one by its position counted from the end (the encoder's source; -1 = not given):

        h_0 = E[token] + W_start[p_start] + W_end[p_end]

    The positions are not 0, 1, 2, ...: in training, an example's tokens take a sorted random subset
    of 0..block_size-1, so every entry of the tables is trained whatever the example's length; in
    evaluation they are spread evenly over the same range (``lm.data.layout`` makes both). A longer
    sequence then uses the same table entries with a smaller spacing, not untrained ones.
    Default positions (none given) are consecutive from the start, without the end channel.
    """

    name = "randomized"
    channels = 2
    pair_meaning = "of (from the start, from the end or -1)"
    lowest = -1  # the end channel may be -1 (not given); the start channel is checked in check

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.start = nn.Parameter(torch.zeros(cfg.block_size, cfg.embedding_dim))
        self.end = nn.Parameter(torch.zeros(cfg.block_size, cfg.embedding_dim))
        nn.init.normal_(self.start, mean=0.0, std=0.02)
        nn.init.normal_(self.end, mean=0.0, std=0.02)

    def consecutive(self, start, length, device=None):
        p = torch.arange(start, start + length, device=device)
        return torch.stack([p, torch.full_like(p, -1)], dim=-1)  # (T, 2): no end channel

    def check(self, pos, length):
        super().check(pos, length)
        _check_range(pos[..., 0], 0, self.block_size - 1, "positions counted from the start must be >= 0")

    def forward(self, pos):
        end = pos[..., 1]  # (..., T)
        from_end = self.end[end.clamp(min=0)] * (end >= 0)[..., None]  # (..., T, C), zero where not given
        return self.start[pos[..., 0]] + from_end


# name -> class(cfg); the names are ModelConfig.pos_encoding's Literal (a test ties them, and the classes
# with grid = True to lm.config.GRID_ENCODINGS)
POSITIONAL = {"learned": LearnedPositional, "sinusoidal": SinusoidalPositional, "rope": RotaryPositional,
              "none": Positional, "randomized": RandomizedPositional, "learned_2d": Learned2DPositional,
              "sinusoidal_2d": Sinusoidal2DPositional, "rope_2d": Rotary2DPositional}


def make_positional(cfg: ModelConfig) -> Positional:
    """The positional encoding named by cfg.pos_encoding; raises ValueError listing the valid names."""
    if cfg.pos_encoding not in POSITIONAL:
        raise ValueError(f"unknown pos_encoding {cfg.pos_encoding!r}; choose one of: {', '.join(POSITIONAL)}")
    return POSITIONAL[cfg.pos_encoding](cfg)
