"""The block ledger: where every block of a lifetime's schedule starts and ends, in env steps.

Blocks are synchronous (docs/blocks.md): every lifetime of a vector env runs block k over the same
tokens ``(end_{k-1}, end_k]`` of its stream, so in env steps summed over the ``lifetimes`` block k is
``[lifetimes * end_{k-1}, lifetimes * end_k]`` in every lifetime. The schedule repeats when a
lifetime outlives one pass, as the stream does. This is the one place that turns the stream's
schedule into block positions; the tracker asks it, the loop only reports what the streams say.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["BlockLedger"]


@dataclass(frozen=True)
class BlockLedger:
    """One pass of ``schedule`` = ``[(task, tokens per lifetime), ...]`` lived by ``lifetimes`` in parallel."""

    schedule: tuple[tuple[str, int], ...]
    lifetimes: int

    @classmethod
    def of(cls, schedule: Sequence[Sequence], lifetimes: int) -> "BlockLedger":
        blocks = tuple((str(task), int(tokens)) for task, tokens in schedule)
        if not blocks or any(tokens < 1 for _, tokens in blocks):
            raise ValueError(f"a block schedule needs at least one block of >= 1 token, got {list(schedule)}")
        if lifetimes < 1:
            raise ValueError(f"lifetimes must be >= 1, got {lifetimes}")
        return cls(blocks, int(lifetimes))

    @property
    def pass_tokens(self) -> int:
        return sum(tokens for _, tokens in self.schedule)

    def task(self, block: int) -> str:
        """The task trained in block ``block`` (counted over the whole lifetime)."""
        return self.schedule[block % len(self.schedule)][0]

    def end_token(self, block: int) -> int:
        """The last token of ``block`` in every lifetime's own count."""
        passes, i = divmod(int(block), len(self.schedule))
        return passes * self.pass_tokens + sum(tokens for _, tokens in self.schedule[: i + 1])

    def start(self, block: int) -> int:
        """Env steps (summed over lifetimes) before ``block``'s first token."""
        return 0 if block <= 0 else self.end_token(block - 1) * self.lifetimes

    def end(self, block: int) -> int:
        """Env steps (summed over lifetimes) at ``block``'s last token."""
        return self.end_token(block) * self.lifetimes

    def block_at(self, step: int) -> int:
        """The block holding env step ``step`` (a block's end step belongs to it)."""
        block = 0
        while self.end(block) < step:
            block += 1
        return block

    def tasks_through(self, block: int) -> list[str]:
        """Every task trained in blocks ``0..block``, in order of first appearance."""
        return list(dict.fromkeys(self.task(k) for k in range(int(block) + 1)))

    def visit(self, block: int) -> int:
        """How many blocks of ``block``'s task ran up to and including it (1 on its first)."""
        task = self.task(block)
        return sum(self.task(k) == task for k in range(int(block) + 1))
