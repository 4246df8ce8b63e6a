"""Asking where a prompt goes without answering it: `route`, `route_many`, `nearest`, `explain`. A mixin of the
`Editor`, over its router, slots and config (the decision itself is the router's: `Router.nearest`)."""

from __future__ import annotations

from collections.abc import Iterable

from .table import Explanation, Route


class RoutingQueries:
    """`route`, `route_many`, `nearest` and `explain` for an editor that has `router`, `slots`, `config`, `encode` and
    `_before_asking` (SoLA's `Editor`)."""

    def route(self, prompt: str) -> Route | None:
        """The edit this prompt is routed to and its key distance, or None if it runs on the base model (`explain`
        says why, and which edit was nearest)."""
        found = self.nearest(prompt)
        return found if found is not None and self._routes(found) else None

    def _routes(self, found: Route) -> bool:
        return found.rival is None and found.distance < self.config.resolved_threshold()

    def explain(self, prompt: str) -> Explanation:
        """Why this prompt runs as it does: the edit that answers it (`routed`), or the nearest live edit that does not,
        with its distance and the threshold it was compared with, on one scale; or why no edit was compared
        ("names no edited subject" with key="subject", "no edits", "editing disabled")."""
        threshold = self.config.resolved_threshold()
        if self._disabled:
            return Explanation(False, None, None, threshold, "editing disabled")
        if len(self.router) == 0:
            return Explanation(False, None, None, threshold, "no edits")
        found = self.nearest(prompt)
        if found is None:
            return Explanation(False, None, None, threshold, "names no edited subject")
        if self._routes(found):
            return Explanation(True, found.edit_id, found.distance, threshold, "routed")
        if found.rival is not None and found.distance < threshold:
            return Explanation(False, found.edit_id, found.distance, threshold, "another question", found.rival)
        return Explanation(False, found.edit_id, found.distance, threshold, "too far")

    def route_many(self, prompts: Iterable[str]) -> list[Route | None]:
        """`route` for each prompt: in front of a multi-LoRA engine, the adapter (edit id) to request, or None."""
        return [self.route(prompt) for prompt in prompts]

    def nearest(self, prompt: str) -> Route | None:
        """The nearest live edit and its distance, whether or not it is under the threshold (None without edits)."""
        self._before_asking()
        found = self.router.nearest(self.encode(prompt)) if len(self.router) else None
        return Route(self.slots.owner(found.slot), found.distance, found.rival) if found is not None else None
