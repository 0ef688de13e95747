"""``gpt-char``: a decoder-only transformer (causal attention via ``F.scaled_dot_product_attention``)
predicting the next character of Python's own standard-library source (on every machine, nothing
downloaded); the held-out tail of the text is the test set.

Characters are UTF-8 bytes (vocabulary 256, the same on every machine). The text is the top-level
``*.py`` files of the running interpreter's stdlib in name order, cut at ``chars`` bytes: coordinator
and workers must run the same Python version to see the same text. No dropout (every replica of a part
must compute the same gradient).
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from dcoord.workloads.base import Workload, WorkloadError, positive_int32

VOCAB = 256


def stdlib_bytes(chars: int) -> torch.Tensor:
    """The first ``chars`` bytes of the stdlib's top-level modules, concatenated in file-name order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out, size = [], 0
    for f in sorted(root.glob("*.py")):
        b = f.read_bytes()
        out.append(b)
        size += len(b)
        if size >= chars:
            break
    raw = b"".join(out)[:chars]
    if len(raw) < chars:
        raise WorkloadError(f"gpt-char: the stdlib at {root} has only {len(raw)} bytes of source; "
                            f"ask for fewer (workload_args.chars <= {len(raw)})")
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8)


class CharWindows(Dataset):
    """Non-overlapping windows of ``block + 1`` bytes: input = first ``block``, target = the next byte each."""

    def __init__(self, tokens: torch.Tensor, block: int) -> None:
        self.tokens, self.block = tokens, block

    def __len__(self) -> int:
        return max(0, (len(self.tokens) - 1) // self.block)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        s = self.tokens[i * self.block : i * self.block + self.block + 1].long()
        return s[:-1], s[1:]


class _Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(att.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp(self.ln2(x))


class CharGPT(nn.Module):
    def __init__(self, block: int, d_model: int, layers: int, heads: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB, d_model)
        self.pos = nn.Embedding(block, d_model)
        self.blocks = nn.Sequential(*[_Block(d_model, heads) for _ in range(layers)])
        self.ln = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, VOCAB, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        return self.head(self.ln(self.blocks(self.tok(idx) + self.pos(pos))))


def next_char_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over every position of every sample (equal lengths: = mean over samples)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))


def gpt_char(seed: int, chars: int = 2_000_000, block: int = 128, d_model: int = 384, layers: int = 6,
             heads: int = 6, test_fraction: float = 0.1, eval_samples: int = 256) -> Workload:
    """About 10.8M parameters at the defaults; e.g. ``{chars: 20000, block: 16, d_model: 32, layers: 1,
    heads: 2}`` for a CPU test."""
    tokens = stdlib_bytes(chars)
    cut = int(len(tokens) * (1 - test_fraction))
    train, test = CharWindows(tokens[:cut], block), CharWindows(tokens[cut:], block)
    torch.manual_seed(seed)
    return Workload.from_dataset(CharGPT(block, d_model, layers, heads), next_char_loss, train, test,
                                 name="gpt-char", eval_samples=eval_samples)


def check_args(args: dict) -> None:
    for key in ("chars", "block", "d_model", "layers", "heads", "eval_samples"):
        v = args.get(key)
        if key in args and not positive_int32(v):  # null too: it would reach the workload function
            raise WorkloadError(f"workload_args.{key}: give a positive integer below 2^31, got {v!r}")
    d, h = args.get("d_model", 384), args.get("heads", 6)
    if d % h:
        raise WorkloadError(f"workload_args.d_model: {d} must be a multiple of heads ({h})")
    tf = args.get("test_fraction", 0.1)
    if not isinstance(tf, int | float) or not 0 < tf < 1:
        raise WorkloadError(f"workload_args.test_fraction: give a number between 0 and 1, got {tf!r}")
    block, chars = args.get("block", 128), args.get("chars", 2_000_000)
    if chars * tf < block + 1 or chars * (1 - tf) < block + 1:
        raise WorkloadError(f"workload_args.chars: {chars} characters leave no {block + 1}-byte window for train "
                         "or test; give more chars or a smaller block")
