"""The read-only dashboard: pages, a JSON API, server-sent events and Prometheus metrics.

:func:`create_dashboard` builds a FastAPI app over a :class:`~crest.service.manager.JobManager`;
:class:`DashboardServer` serves it with uvicorn on the manager's event loop. Pages and their
code live in ``crest/service/static`` (no build step; the chart library, uPlot, is vendored).
"""

from crest.service.dashboard.app import close_streams, create_dashboard
from crest.service.dashboard.models import (
    ClassPool,
    JobDetail,
    JobSummary,
    RankRate,
    RatePoint,
    RegionMonitor,
    RpcMethod,
    SelectionRecord,
    TrainerShare,
)
from crest.service.dashboard.server import DashboardServer

__all__ = [
    "ClassPool",
    "DashboardServer",
    "JobDetail",
    "JobSummary",
    "RankRate",
    "RatePoint",
    "RegionMonitor",
    "RpcMethod",
    "SelectionRecord",
    "TrainerShare",
    "close_streams",
    "create_dashboard",
]
