"""What every evaluation compares: the network and the propagations without one, by name.

Kept apart from the numbers (``metrics``) so that the tables and figures of the comparisons and
the data-quality table depend on these names only, not on how the numbers are computed.
"""

from __future__ import annotations

#: The methods compared in every plot and table, in this order.
METHODS: tuple[str, ...] = ("network", "straight", "helix", "field_only")
#: Their names in tables and legends.
LABELS: dict[str, str] = {
    "network": "network",
    "straight": "straight line",
    "helix": "helix, nominal field",
    "field_only": "field map, no material (floor)",
}


class EvaluationInputError(ValueError):
    """An input file that cannot be evaluated; the message names the file."""
