"""Training data for the demo and the benchmark, built at run time and never downloaded.

Two sources:
- a byte-level text corpus made of Python's own standard-library source (for the small GPT);
- a teacher-network classification task of generated data (for the deep MLP).

Both are deterministic: the same seed gives the same batches.
"""

from __future__ import annotations

import functools
import sysconfig
from pathlib import Path

import torch

VOCAB_SIZE = 256
"""Byte-level vocabulary: every byte is a token, so any text encodes and nothing is unknown."""


@functools.lru_cache(maxsize=4)
def stdlib_text(max_bytes: int = 4_000_000) -> bytes:
    """The top-level ``*.py`` files of the standard library, sorted by name, joined, truncated.

    Read once per process and cached. The text differs between Python versions, but is fixed for
    one interpreter.

    >>> text = stdlib_text(100_000)
    >>> len(text)
    100000
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    parts, size = [], 0
    for path in sorted(root.glob("*.py")):
        data = path.read_bytes()
        parts.append(data)
        size += len(data)
        if size >= max_bytes:
            break
    text = b"\n".join(parts)[:max_bytes]
    if not text:
        raise FileNotFoundError(f"no Python source found under {root}")
    return text


class TextCorpus:
    """A byte-level corpus with a seeded sampler of ``(input, target)`` blocks.

    >>> corpus = TextCorpus(max_bytes=100_000)
    >>> gen = torch.Generator().manual_seed(0)
    >>> x, y = corpus.batch(4, 64, gen)
    >>> x.shape, bool((x[:, 1:] == y[:, :-1]).all())
    (torch.Size([4, 64]), True)
    """

    def __init__(self, max_bytes: int = 4_000_000):
        self.data = torch.frombuffer(bytearray(stdlib_text(max_bytes)), dtype=torch.uint8)

    def __len__(self) -> int:
        return len(self.data)

    def batch(
        self, batch_size: int, block_size: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random windows of ``block_size`` tokens and the same windows shifted by one."""
        starts = torch.randint(len(self.data) - block_size - 1, (batch_size,), generator=generator)
        offsets = torch.arange(block_size + 1)
        windows = self.data[starts[:, None] + offsets].long()
        return windows[:, :-1], windows[:, 1:]

    @staticmethod
    def decode(tokens: torch.Tensor) -> str:
        """Token ids back to text (invalid UTF-8 is replaced).

        >>> TextCorpus.decode(torch.tensor([104, 105]))
        'hi'
        """
        return bytes(tokens.tolist()).decode("utf-8", errors="replace")


class TeacherTask:
    """Classification of Gaussian inputs by a fixed random teacher network (infinite data).

    The labels are the argmax of a random two-layer tanh network, so a student MLP can learn them
    well but not instantly. The teacher depends only on ``seed``; the batches on the generator.

    >>> task = TeacherTask(d_in=16, n_classes=4, seed=0)
    >>> x, y = task.batch(8, torch.Generator().manual_seed(1))
    >>> x.shape, y.shape, int(y.max()) < 4
    (torch.Size([8, 16]), torch.Size([8]), True)
    """

    def __init__(self, d_in: int = 32, n_classes: int = 10, hidden: int = 64, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.d_in = d_in
        self.n_classes = n_classes
        self.w1 = torch.randn(d_in, hidden, generator=gen) / d_in**0.5
        self.w2 = torch.randn(hidden, n_classes, generator=gen) / hidden**0.5

    def batch(
        self, batch_size: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch_size`` fresh inputs and their teacher labels."""
        x = torch.randn(batch_size, self.d_in, generator=generator)
        y = (torch.tanh(x @ self.w1) @ self.w2).argmax(dim=1)
        return x, y
