"""Which way a bundle answers, chosen when it is loaded: ``--serve-as`` names the option, ``--latency-budget-ms``
picks the most accurate one whose measured cost fits. The costs are measured at fit time (``training.costing``).
"""

from __future__ import annotations

from stacking.bundle.manifest import Manifest, OptionEntry
from stacking.choices import SERVE_AS
from stacking.errors import UserError

STACK, CASCADE, STUDENT = SERVE_AS.values


def servable(manifest: Manifest) -> dict[str, OptionEntry | None]:
    """The options ``--serve-as`` may name that this bundle has (a bundle without costs: the stack, uncosted)."""
    if manifest.serving is None:
        return {STACK: None}
    return {o.name: o for o in manifest.serving.options if o.servable}


def resolve_serve_as(manifest: Manifest, serve_as: str, budget_ms: float | None) -> str:
    """The option that serves: ``serve_as``, or with a budget the most accurate option whose measured cost fits.

    Most accurate: highest accuracy, then lowest log-loss, then cheapest. A budget no option
    meets is refused naming the cheapest; a budget beside a named option other than the
    stack (the default) is refused as contradictory.
    """
    SERVE_AS.check(serve_as)
    available = servable(manifest)
    if budget_ms is None:
        if serve_as not in available:
            hint = (
                "train one with: stacking distill BUNDLE --student ARCH"
                if serve_as == STUDENT
                else "refit it with this version to get one"
            )
            raise UserError(f"--serve-as {serve_as}: the bundle has no {serve_as}; {hint}")
        return serve_as
    if serve_as != STACK:
        raise UserError(f"--serve-as {serve_as} and --latency-budget-ms {budget_ms:g}: give one of them")
    if budget_ms <= 0:
        raise UserError(f"--latency-budget-ms {budget_ms:g}: must be positive")
    costed = {name: o for name, o in available.items() if o is not None and o.ms_per_image is not None}
    if not costed:
        raise UserError(
            f"--latency-budget-ms {budget_ms:g}: the bundle has no measured costs (fitted before they "
            "existed); refit it, or name --serve-as"
        )
    fits = [o for o in costed.values() if o.ms_per_image <= budget_ms]
    if not fits:
        cheapest = min(costed.values(), key=lambda o: o.ms_per_image)
        raise UserError(
            f"--latency-budget-ms {budget_ms:g}: no option fits; the cheapest, {cheapest.name}, costs "
            f"{cheapest.ms_per_image:.3g} ms per image"
        )
    return min(fits, key=lambda o: (-o.accuracy, o.log_loss, o.ms_per_image)).name


def pareto_front(ms: list[float], merit: list[float]) -> list[bool]:
    """Whether each option is on the cost front of ``merit`` (higher is better: accuracy, or minus log-loss): no
    other is as cheap and as good, and better in one."""
    return [
        not any(m2 <= m1 and a2 >= a1 and (m2 < m1 or a2 > a1) for m2, a2 in zip(ms, merit))
        for m1, a1 in zip(ms, merit)
    ]
