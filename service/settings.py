"""Settings of ``crest serve``: command-line flags, or ``CREST_*`` environment variables.

Every field below is also an environment variable: ``CREST_`` + the upper-case field name
(``CREST_PORT=50051``, ``CREST_STORE=redis://redis:6379/0``, ``CREST_TOKEN=...``). Flags of
``crest serve`` override the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServeSettings(BaseSettings):
    """The coordinator's configuration."""

    # Empty variables count as unset, so compose can pass optional ones (``${CREST_TLS_CERT:-}``).
    model_config = SettingsConfigDict(env_prefix="CREST_", extra="ignore", env_ignore_empty=True)

    host: str = Field("127.0.0.1", description="address to bind gRPC (0.0.0.0 for all)")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one")
    store: str = Field(
        "memory://", description="job state: memory:// or redis://host:port/db (durable)"
    )
    store_max_value_mb: int = Field(
        64,
        ge=1,
        le=511,
        description="largest value written to Redis (a job's snapshot head or piece, event, "
        "archived region), MiB",
    )
    archived_regions: int = Field(
        256,
        ge=1,
        description="closed regions kept per job for trainers resuming from a checkpoint; a "
        "resume into an older region fails",
    )
    lease_s: float = Field(
        0.0,
        ge=0,
        description="coordinator replicas: several `crest serve` sharing one Redis store, each "
        "job owned by the replica holding its lease in Redis, which expires this long after "
        "its last renewal (a dead replica's jobs are taken over after it); 0: one coordinator "
        "owns every job, no leases",
    )
    replica_id: str | None = Field(
        None,
        description="with lease_s: this replica's name in leases, redirects and logs (e.g. the "
        "pod's name); default a random one",
    )
    advertise: str | None = Field(
        None,
        description="with lease_s: the host:port trainers reach this replica at (sent to them "
        "when they call another replica about its jobs); default this machine's hostname and "
        "the gRPC port when host is 0.0.0.0, else host:port",
    )
    finished_job_ttl_s: float = Field(
        7 * 86400.0, ge=0, description="delete finished jobs this long after they finish; 0 never"
    )
    token: SecretStr | None = Field(None, description="shared secret every RPC must carry")
    tls_cert: Path | None = Field(None, description="PEM certificate chain: serve TLS")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert")
    dashboard_host: str = Field("127.0.0.1", description="address of the dashboard (HTTP)")
    dashboard_port: int = Field(
        8080, ge=-1, le=65535, description="dashboard port; 0 picks a free one, -1 disables it"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="log level of the coordinator process"
    )
    wait_s: float = Field(60.0, gt=0, description="longest wait for peers or selection per call")
    selection_timeout_s: float = Field(
        30.0, gt=0, description="past this a region gets random batches (flagged)"
    )
    grace_s: float = Field(10.0, ge=0, description="SIGTERM: time for in-flight RPCs to finish")
    strict: bool = Field(
        False,
        description="an unexpected selection error (a bug) fails the job's calls with INTERNAL "
        "instead of falling back to random batches (tests, debugging); it is always logged "
        "and counted",
    )
    selector: Literal["inprocess", "ray"] = Field(
        "ray", description="where selection runs: a Ray actor pool, or this process (tiny jobs)"
    )
    device: str = Field("cpu", description="torch device of the in-process selector")
    ray_address: str | None = Field(
        None,
        description="Ray cluster to join (e.g. ray-head:6380); unset: start a local Ray, "
        "loopback only, with token authentication (RAY_AUTH_TOKEN or ~/.ray/auth_token)",
    )
    ray_num_cpus: int | None = Field(
        None, ge=1, description="CPUs of the local Ray (embedded mode); default all"
    )
    ray_object_store_mb: int = Field(
        256, ge=64, description="object store of the local Ray (embedded mode), MiB"
    )
    selector_actors: int | None = Field(
        None, ge=1, description="selector actors; default one per GPU, else 1"
    )
    gpu_share: float = Field(
        1.0, gt=0, le=1, description="GPUs per selector actor where GPUs exist"
    )
    selector_threads: int | None = Field(
        None,
        ge=1,
        description="torch threads per selector actor (or of the in-process selector); "
        "default one per selector core, else 1",
    )
    selector_cores: str | None = Field(
        None,
        description="pin the selector actors (each on its node) or the in-process selector's "
        "thread to these cores, e.g. 1 or 2-3; default unpinned",
    )
    coordinator_cores: str | None = Field(
        None,
        description="pin this process (event loop, gRPC and worker threads; an embedded Ray's "
        "processes, and its actors unless selector_cores is set) to these cores, e.g. 1; "
        "default unpinned",
    )

    @field_validator("selector_cores", "coordinator_cores")
    @classmethod
    def _core_list(cls, value: str | None) -> str | None:
        """Checked and written canonically (``"2,3"`` -> ``"2-3"``); pinned by ``serve``."""
        if value is None:
            return None
        from crest.worker.placement import format_cores, parse_cores

        return format_cores(parse_cores(value))

    @model_validator(mode="after")
    def _leases_need_redis(self) -> ServeSettings:
        if self.lease_s > 0 and not self.store.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                "lease_s (coordinator replicas) needs a shared Redis store: "
                "store=redis://host:port/db"
            )
        return self

    @model_validator(mode="after")
    def _tls_pair(self) -> ServeSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        return self

    @model_validator(mode="after")
    def _threads_match_cores(self) -> ServeSettings:
        from crest.worker.placement import parse_cores, selector_threads

        cores = parse_cores(self.selector_cores) if self.selector_cores else None
        selector_threads(self.selector_threads, cores)  # raises when they disagree
        return self

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def advertised(self, port: int) -> str:
        """The ``host:port`` other processes reach this replica at, once bound to ``port``."""
        if self.advertise:
            return self.advertise
        import socket

        wildcard = self.host in ("0.0.0.0", "::", "[::]", "")
        return f"{socket.gethostname() if wildcard else self.host}:{port}"
