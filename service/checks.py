"""Checks of the quadratic model, and the adaptive schedule they drive (spec section 3).

Every rank reports its check scalars after a check step, or rank 0 reports all ranks' sums
at once (a combined report); once all ranks are covered, the relative error
``|L_true - F(δ)| / L_true`` of their combined scalars decides whether the region goes on. The
first reported curvature of a region sets the next region's check interval k and number of
coresets P.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from crest.proto import steps
from crest.proto.contract import CheckDecision, CheckRecord, CheckReport, JobConfig
from crest.proto.errors import InvalidArgument
from crest.service.region import Region


def validate_report(report: CheckReport) -> None:
    """Raise :class:`InvalidArgument` for scalars no trainer could have measured."""
    values = (report.loss_sum, report.linear, report.quadratic, report.curvature)
    if not all(math.isfinite(v) for v in values):
        raise InvalidArgument("check scalars must be finite")
    if report.loss_sum < 0 or report.count < 0 or report.curvature < 0:
        raise InvalidArgument("loss_sum, count and curvature must be >= 0")
    if report.ranks < 1:
        raise InvalidArgument(f"a report covers at least one rank, not {report.ranks}")
    origin = report.initial_loss_sum  # NaN: not measured
    if not math.isnan(origin) and not (math.isfinite(origin) and origin >= 0):
        raise InvalidArgument("initial_loss_sum must be NaN (not measured) or finite and >= 0")


def decide(region: Region, tau: float) -> tuple[CheckDecision, CheckRecord]:
    """Judge the region's pending reports (one per rank, or one combined report of all ranks)
    and record the decision in it.

    Losses combine as a sum over all ranks' check examples; the model terms as the mean over
    ranks. L_0 is the region's, or, where every rank measured it at the region's start (the
    service side, whose embeddings are older than θ_0), the ranks' combined. A failed check
    after step ``t`` ends the region at ``t + DECISION_LAG``; a check
    whose decision could not take effect before the region's end also ends it.

    The sums run in rank order, the order in which a combined report adds its ranks' scalars
    (:func:`crest.client.ranks.combine_reports`): both give bit-identical decisions, whatever
    order the separate reports arrived in.
    """
    reports = [region.pending[rank] for rank in sorted(region.pending)]
    step = reports[0].step
    ranks = sum(r.ranks for r in reports)
    count = sum(r.count for r in reports)
    loss = sum(r.loss_sum for r in reports) / max(count, 1)
    if all(not math.isnan(r.initial_loss_sum) for r in reports):  # the ranks measured L_0
        region.initial_loss = sum(r.initial_loss_sum for r in reports) / max(count, 1)
    linear = sum(r.linear for r in reports) / ranks
    quadratic = sum(r.quadratic for r in reports) / ranks
    predicted = region.initial_loss + linear + 0.5 * quadratic
    error = abs(loss - predicted) / loss if loss > 0 else (0.0 if predicted == 0 else math.inf)
    new_region = error > tau
    if region.curvature is None:
        region.curvature = sum(r.curvature for r in reports) / ranks
    end = steps.end_after_failed_check(step)
    if new_region and end < region.end_step:
        region.end_step, region.end_reason = end, "check"
    new_region = new_region or end >= region.end_step  # bound or budget ends it anyway
    decision = CheckDecision(
        region_id=region.region_id,
        step=step,
        new_region=new_region,
        loss=loss,
        predicted=predicted,
        relative_error=error,
    )
    region.decisions[step] = decision
    region.last_decided = step
    region.pending = {}
    record = CheckRecord(
        step=step, loss=loss, predicted=predicted, relative_error=error, new_region=new_region
    )
    return decision, record


@dataclass
class Adaptivity:
    """k and P for the next region: ``k = ceil(κ_ref / κ)`` with κ the closing region's
    curvature and κ_ref the largest seen so far (the first region's is a poor reference:
    curvature rises early in training), ``P = min(P_0 · k, max_coresets)``."""

    check_interval: int
    num_coresets: int
    curvature_reference: float = 0.0

    def after(self, region: Region, config: JobConfig) -> None:
        if not config.adaptive or region.curvature is None or region.curvature <= 0:
            return
        self.curvature_reference = max(self.curvature_reference, region.curvature)
        k = math.ceil(self.curvature_reference / region.curvature - 1e-9)
        self.check_interval = min(max(k, 1), config.max_check_interval)
        self.num_coresets = min(
            config.num_coresets * self.check_interval,
            max(config.resolved_max_coresets, config.num_coresets),
        )
