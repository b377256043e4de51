"""A weighted choice among backends, made per connection: Gateway API backendRefs with
weights (TCPRoute, TLSRoute), whose shares hold per Service whatever its number of pods.

Smooth weighted round robin (nginx's `ngx_http_upstream_get_peer`): every pick adds each
option's weight to its credit, takes the option with the most credit, and takes the total
back from it. Over any run of `sum(weights)` picks each option is taken exactly its weight's
times, spread out rather than in bursts (3:1 gives a a b a, not a a a b), and no random
number is drawn. Each worker keeps its own credits: across N workers the shares hold
within N picks of the weights.
"""

from __future__ import annotations


class WeightedChoice:
    """`pick()` → one of `options`' names, in proportion to their weights (> 0)."""

    __slots__ = ("_credit", "_names", "_total", "_weights")

    def __init__(self, options: tuple[tuple[str, int], ...]) -> None:
        kept = [(name, w) for name, w in options if w > 0]
        self._names = [name for name, _ in kept]
        self._weights = [w for _, w in kept]
        self._credit = [0] * len(kept)
        self._total = sum(self._weights)

    def pick(self) -> str:
        """The next option's name; "" when there is none (every weight 0: refused)."""
        credit = self._credit
        if not credit:
            return ""
        best = 0
        for i, w in enumerate(self._weights):
            credit[i] += w
            if credit[i] > credit[best]:
                best = i
        credit[best] -= self._total
        return self._names[best]
