"""Where a camera's frames went: published, received by the node, answered, dropped by the node's
newest-frame policy, lost before the node; one table for node-bench and the demo, with the reason
when too few are answered (a table that only says "480/600" explains nothing)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

#: below this fraction of published frames answered, the table says why
GOAL = 0.95


@dataclass(frozen=True)
class Delivery:
    """One node's frames. ``lost_counted``: what the node itself counted in ``lost_in_transport``
    (per publisher; exact where the RMW numbers the frames), beside ``published - received``, which
    only the publisher's side knows."""

    label: str
    published: int
    received: int
    answered: int
    dropped: int
    lost_counted: Optional[int] = None
    reliability: str = ""

    @property
    def lost_before_node(self) -> int:
        return max(0, self.published - self.received)

    def answered_fraction(self) -> float:
        return self.answered / self.published if self.published else float("nan")

    def reason(self) -> str:
        """Why fewer than ``GOAL`` of the frames were answered ('' when enough were)."""
        if not self.published or self.answered >= GOAL * self.published:
            return ""
        lost, dropped = self.lost_before_node, self.dropped
        rest = self.published - self.answered - lost - dropped
        causes = sorted([(lost, f"{lost} lost before the node (DDS: large frames over "
                                f"{self.reliability or 'this'} QoS; see 'Large frames' in docs/node.md)"),
                         (dropped, f"{dropped} dropped by the newest-frame policy (the node is slower than "
                                   f"the camera: each frame waits only for the one being processed)"),
                         (rest, f"{rest} received but not answered (in flight at the end, refused or "
                                f"lost on the way back)")], key=lambda c: -c[0])
        return "; ".join(text for n, text in causes if n > 0)

    def row(self) -> dict[str, Any]:
        return {**asdict(self), "lost_before_node": self.lost_before_node,
                "answered_pct": 100.0 * self.answered_fraction(), "reason": self.reason()}


def format_delivery(rows: list[Delivery]) -> str:
    """The table, then one warning line per node under ``GOAL``."""
    lines = [f"{'frames':<10} {'published':>9} {'received':>9} {'answered':>9} {'dropped':>8} "
             f"{'lost before node':>17} {'(node counted)':>15}  subscription"]
    for d in rows:
        counted = "-" if d.lost_counted is None else str(d.lost_counted)
        lines.append(f"{d.label:<10} {d.published:>9} {d.received:>9} {d.answered:>9} {d.dropped:>8} "
                     f"{d.lost_before_node:>17} {counted:>15}  {d.reliability or '-'}")
    for d in rows:
        if d.reason():
            lines.append(f"warning: {d.label}: {100.0 * d.answered_fraction():.1f} % answered (goal "
                         f"{100 * GOAL:.0f} %): {d.reason()}")
    return "\n".join(lines)
