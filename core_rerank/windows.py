"""Split a candidate list that does not fit one prompt into windows of comparable content.

Documents are dealt round-robin by their input rank (0, k, 2k, ... to window 0; 1, k+1, ... to
window 1), so every window holds a similar mix of strong and weak first-stage candidates and a
similar number of tokens. Comparable windows keep contrasted scores comparable; the reranker also
rescales each window's scores by its share of document tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["plan_windows"]


def plan_windows(sizes: Sequence[int], budget: int) -> list[list[int]]:
    """Fewest round-robin windows whose token sizes each fit ``budget``; every item exactly once.

    Raises ValueError when a single item is larger than the budget.
    """
    if not sizes:
        return []
    if max(sizes) > budget:
        raise ValueError(f"an item of {max(sizes)} tokens exceeds the window budget of {budget}")
    n = max(1, -(-sum(sizes) // budget))
    while True:
        windows = [list(range(w, len(sizes), n)) for w in range(n)]
        if all(sum(sizes[i] for i in w) <= budget for w in windows):
            return [w for w in windows if w]
        n += 1
