from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Limits(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LIMITS_UNSPECIFIED: _ClassVar[Limits]
    MAX_MESSAGE_BYTES: _ClassVar[Limits]
    MAX_STREAM_CHUNKS: _ClassVar[Limits]
    MAX_PUBLISH_BYTES: _ClassVar[Limits]

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    FLOAT32: _ClassVar[DType]
    FLOAT16: _ClassVar[DType]
    INT64: _ClassVar[DType]
    INT32: _ClassVar[DType]
    BFLOAT16: _ClassVar[DType]

class RegionStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REGION_STATUS_UNSPECIFIED: _ClassVar[RegionStatus]
    EMBED: _ClassVar[RegionStatus]
    SELECTING: _ClassVar[RegionStatus]
    READY: _ClassVar[RegionStatus]
    DONE: _ClassVar[RegionStatus]
LIMITS_UNSPECIFIED: Limits
MAX_MESSAGE_BYTES: Limits
MAX_STREAM_CHUNKS: Limits
MAX_PUBLISH_BYTES: Limits
DTYPE_UNSPECIFIED: DType
FLOAT32: DType
FLOAT16: DType
INT64: DType
INT32: DType
BFLOAT16: DType
REGION_STATUS_UNSPECIFIED: RegionStatus
EMBED: RegionStatus
SELECTING: RegionStatus
READY: RegionStatus
DONE: RegionStatus

class Array(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class JobConfig(_message.Message):
    __slots__ = ("num_examples", "num_classes", "batch_size", "epochs", "train_frac", "world_size", "seed", "subset_size", "tau", "num_coresets", "max_coresets", "adaptive", "check_interval", "max_check_interval", "max_coreset_uses", "check_sample_size", "loss_window", "learned_loss", "drop_interval", "max_drop_frac", "min_pool_per_class", "readmit_after", "strategy", "random_batches", "auto_min_gain", "auto_retest_epochs", "name", "class_weighting", "allow_empty_classes", "selection_side", "max_staleness", "lookahead_coresets", "exclude_noisy", "noisy_mads", "auto_test_epochs", "auto_probe_size", "auto_max_loss_excess", "auto_min_loss_excess", "weight_exponent", "auto_switch_margin")
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_FRAC_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SUBSET_SIZE_FIELD_NUMBER: _ClassVar[int]
    TAU_FIELD_NUMBER: _ClassVar[int]
    NUM_CORESETS_FIELD_NUMBER: _ClassVar[int]
    MAX_CORESETS_FIELD_NUMBER: _ClassVar[int]
    ADAPTIVE_FIELD_NUMBER: _ClassVar[int]
    CHECK_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    MAX_CHECK_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    MAX_CORESET_USES_FIELD_NUMBER: _ClassVar[int]
    CHECK_SAMPLE_SIZE_FIELD_NUMBER: _ClassVar[int]
    LOSS_WINDOW_FIELD_NUMBER: _ClassVar[int]
    LEARNED_LOSS_FIELD_NUMBER: _ClassVar[int]
    DROP_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    MAX_DROP_FRAC_FIELD_NUMBER: _ClassVar[int]
    MIN_POOL_PER_CLASS_FIELD_NUMBER: _ClassVar[int]
    READMIT_AFTER_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    RANDOM_BATCHES_FIELD_NUMBER: _ClassVar[int]
    AUTO_MIN_GAIN_FIELD_NUMBER: _ClassVar[int]
    AUTO_RETEST_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CLASS_WEIGHTING_FIELD_NUMBER: _ClassVar[int]
    ALLOW_EMPTY_CLASSES_FIELD_NUMBER: _ClassVar[int]
    SELECTION_SIDE_FIELD_NUMBER: _ClassVar[int]
    MAX_STALENESS_FIELD_NUMBER: _ClassVar[int]
    LOOKAHEAD_CORESETS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_NOISY_FIELD_NUMBER: _ClassVar[int]
    NOISY_MADS_FIELD_NUMBER: _ClassVar[int]
    AUTO_TEST_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    AUTO_PROBE_SIZE_FIELD_NUMBER: _ClassVar[int]
    AUTO_MAX_LOSS_EXCESS_FIELD_NUMBER: _ClassVar[int]
    AUTO_MIN_LOSS_EXCESS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_EXPONENT_FIELD_NUMBER: _ClassVar[int]
    AUTO_SWITCH_MARGIN_FIELD_NUMBER: _ClassVar[int]
    num_examples: int
    num_classes: int
    batch_size: int
    epochs: float
    train_frac: float
    world_size: int
    seed: int
    subset_size: int
    tau: float
    num_coresets: int
    max_coresets: int
    adaptive: bool
    check_interval: int
    max_check_interval: int
    max_coreset_uses: int
    check_sample_size: int
    loss_window: int
    learned_loss: float
    drop_interval: float
    max_drop_frac: float
    min_pool_per_class: int
    readmit_after: int
    strategy: str
    random_batches: str
    auto_min_gain: float
    auto_retest_epochs: float
    name: str
    class_weighting: str
    allow_empty_classes: bool
    selection_side: str
    max_staleness: int
    lookahead_coresets: bool
    exclude_noisy: bool
    noisy_mads: float
    auto_test_epochs: float
    auto_probe_size: int
    auto_max_loss_excess: float
    auto_min_loss_excess: float
    weight_exponent: float
    auto_switch_margin: float
    def __init__(self, num_examples: _Optional[int] = ..., num_classes: _Optional[int] = ..., batch_size: _Optional[int] = ..., epochs: _Optional[float] = ..., train_frac: _Optional[float] = ..., world_size: _Optional[int] = ..., seed: _Optional[int] = ..., subset_size: _Optional[int] = ..., tau: _Optional[float] = ..., num_coresets: _Optional[int] = ..., max_coresets: _Optional[int] = ..., adaptive: _Optional[bool] = ..., check_interval: _Optional[int] = ..., max_check_interval: _Optional[int] = ..., max_coreset_uses: _Optional[int] = ..., check_sample_size: _Optional[int] = ..., loss_window: _Optional[int] = ..., learned_loss: _Optional[float] = ..., drop_interval: _Optional[float] = ..., max_drop_frac: _Optional[float] = ..., min_pool_per_class: _Optional[int] = ..., readmit_after: _Optional[int] = ..., strategy: _Optional[str] = ..., random_batches: _Optional[str] = ..., auto_min_gain: _Optional[float] = ..., auto_retest_epochs: _Optional[float] = ..., name: _Optional[str] = ..., class_weighting: _Optional[str] = ..., allow_empty_classes: _Optional[bool] = ..., selection_side: _Optional[str] = ..., max_staleness: _Optional[int] = ..., lookahead_coresets: _Optional[bool] = ..., exclude_noisy: _Optional[bool] = ..., noisy_mads: _Optional[float] = ..., auto_test_epochs: _Optional[float] = ..., auto_probe_size: _Optional[int] = ..., auto_max_loss_excess: _Optional[float] = ..., auto_min_loss_excess: _Optional[float] = ..., weight_exponent: _Optional[float] = ..., auto_switch_margin: _Optional[float] = ...) -> None: ...

class CreateJobRequest(_message.Message):
    __slots__ = ("header", "labels")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    header: JobHeader
    labels: Array
    def __init__(self, header: _Optional[_Union[JobHeader, _Mapping]] = ..., labels: _Optional[_Union[Array, _Mapping]] = ...) -> None: ...

class JobHeader(_message.Message):
    __slots__ = ("job_id", "config")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    config: JobConfig
    def __init__(self, job_id: _Optional[str] = ..., config: _Optional[_Union[JobConfig, _Mapping]] = ...) -> None: ...

class CreateJobResponse(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class OpenSessionRequest(_message.Message):
    __slots__ = ("job_id", "rank")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    rank: int
    def __init__(self, job_id: _Optional[str] = ..., rank: _Optional[int] = ...) -> None: ...

class OpenSessionResponse(_message.Message):
    __slots__ = ("job_id", "rank", "world_size", "total_steps", "steps_per_virtual_epoch", "num_classes", "batch_size", "committed_seq", "selection_side", "num_examples")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    STEPS_PER_VIRTUAL_EPOCH_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_SEQ_FIELD_NUMBER: _ClassVar[int]
    SELECTION_SIDE_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    rank: int
    world_size: int
    total_steps: int
    steps_per_virtual_epoch: float
    num_classes: int
    batch_size: int
    committed_seq: int
    selection_side: str
    num_examples: int
    def __init__(self, job_id: _Optional[str] = ..., rank: _Optional[int] = ..., world_size: _Optional[int] = ..., total_steps: _Optional[int] = ..., steps_per_virtual_epoch: _Optional[float] = ..., num_classes: _Optional[int] = ..., batch_size: _Optional[int] = ..., committed_seq: _Optional[int] = ..., selection_side: _Optional[str] = ..., num_examples: _Optional[int] = ...) -> None: ...

class GetRegionRequest(_message.Message):
    __slots__ = ("job_id", "rank", "step", "page", "region_id", "num_ranks")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    REGION_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_RANKS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    rank: int
    step: int
    page: int
    region_id: int
    num_ranks: int
    def __init__(self, job_id: _Optional[str] = ..., rank: _Optional[int] = ..., step: _Optional[int] = ..., page: _Optional[int] = ..., region_id: _Optional[int] = ..., num_ranks: _Optional[int] = ...) -> None: ...

class WeightedBatch(_message.Message):
    __slots__ = ("indices", "weights")
    INDICES_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    indices: Array
    weights: Array
    def __init__(self, indices: _Optional[_Union[Array, _Mapping]] = ..., weights: _Optional[_Union[Array, _Mapping]] = ...) -> None: ...

class Region(_message.Message):
    __slots__ = ("region_id", "status", "start_step", "end_step", "check_interval", "candidates", "check_indices", "batches", "initial_loss", "wants_model", "wants_weights", "page", "num_pages", "num_candidates", "num_check_indices", "num_batches", "continues_batch", "rank_status", "rank_candidates", "rank_check_indices", "rank_batches")
    REGION_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    START_STEP_FIELD_NUMBER: _ClassVar[int]
    END_STEP_FIELD_NUMBER: _ClassVar[int]
    CHECK_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    CHECK_INDICES_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    INITIAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    WANTS_MODEL_FIELD_NUMBER: _ClassVar[int]
    WANTS_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    NUM_PAGES_FIELD_NUMBER: _ClassVar[int]
    NUM_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    NUM_CHECK_INDICES_FIELD_NUMBER: _ClassVar[int]
    NUM_BATCHES_FIELD_NUMBER: _ClassVar[int]
    CONTINUES_BATCH_FIELD_NUMBER: _ClassVar[int]
    RANK_STATUS_FIELD_NUMBER: _ClassVar[int]
    RANK_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    RANK_CHECK_INDICES_FIELD_NUMBER: _ClassVar[int]
    RANK_BATCHES_FIELD_NUMBER: _ClassVar[int]
    region_id: int
    status: RegionStatus
    start_step: int
    end_step: int
    check_interval: int
    candidates: Array
    check_indices: Array
    batches: _containers.RepeatedCompositeFieldContainer[WeightedBatch]
    initial_loss: float
    wants_model: bool
    wants_weights: int
    page: int
    num_pages: int
    num_candidates: int
    num_check_indices: int
    num_batches: int
    continues_batch: bool
    rank_status: _containers.RepeatedScalarFieldContainer[RegionStatus]
    rank_candidates: _containers.RepeatedScalarFieldContainer[int]
    rank_check_indices: _containers.RepeatedScalarFieldContainer[int]
    rank_batches: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, region_id: _Optional[int] = ..., status: _Optional[_Union[RegionStatus, str]] = ..., start_step: _Optional[int] = ..., end_step: _Optional[int] = ..., check_interval: _Optional[int] = ..., candidates: _Optional[_Union[Array, _Mapping]] = ..., check_indices: _Optional[_Union[Array, _Mapping]] = ..., batches: _Optional[_Iterable[_Union[WeightedBatch, _Mapping]]] = ..., initial_loss: _Optional[float] = ..., wants_model: _Optional[bool] = ..., wants_weights: _Optional[int] = ..., page: _Optional[int] = ..., num_pages: _Optional[int] = ..., num_candidates: _Optional[int] = ..., num_check_indices: _Optional[int] = ..., num_batches: _Optional[int] = ..., continues_batch: _Optional[bool] = ..., rank_status: _Optional[_Iterable[_Union[RegionStatus, str]]] = ..., rank_candidates: _Optional[_Iterable[int]] = ..., rank_check_indices: _Optional[_Iterable[int]] = ..., rank_batches: _Optional[_Iterable[int]] = ...) -> None: ...

class EmbeddingChunk(_message.Message):
    __slots__ = ("job_id", "rank", "region_id", "seq", "indices", "embeddings", "losses", "stream_chunks", "first_rank", "rank_rows")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    REGION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    INDICES_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    LOSSES_FIELD_NUMBER: _ClassVar[int]
    STREAM_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    FIRST_RANK_FIELD_NUMBER: _ClassVar[int]
    RANK_ROWS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    rank: int
    region_id: int
    seq: int
    indices: Array
    embeddings: Array
    losses: Array
    stream_chunks: int
    first_rank: int
    rank_rows: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, job_id: _Optional[str] = ..., rank: _Optional[int] = ..., region_id: _Optional[int] = ..., seq: _Optional[int] = ..., indices: _Optional[_Union[Array, _Mapping]] = ..., embeddings: _Optional[_Union[Array, _Mapping]] = ..., losses: _Optional[_Union[Array, _Mapping]] = ..., stream_chunks: _Optional[int] = ..., first_rank: _Optional[int] = ..., rank_rows: _Optional[_Iterable[int]] = ...) -> None: ...

class UploadAck(_message.Message):
    __slots__ = ("committed_seq",)
    COMMITTED_SEQ_FIELD_NUMBER: _ClassVar[int]
    committed_seq: int
    def __init__(self, committed_seq: _Optional[int] = ...) -> None: ...

class CheckReport(_message.Message):
    __slots__ = ("job_id", "rank", "region_id", "step", "loss_sum", "count", "linear", "quadratic", "curvature", "train_seconds", "selection_seconds", "initial_loss_sum", "ranks")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    REGION_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    LOSS_SUM_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    LINEAR_FIELD_NUMBER: _ClassVar[int]
    QUADRATIC_FIELD_NUMBER: _ClassVar[int]
    CURVATURE_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SELECTION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    INITIAL_LOSS_SUM_FIELD_NUMBER: _ClassVar[int]
    RANKS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    rank: int
    region_id: int
    step: int
    loss_sum: float
    count: int
    linear: float
    quadratic: float
    curvature: float
    train_seconds: float
    selection_seconds: float
    initial_loss_sum: float
    ranks: int
    def __init__(self, job_id: _Optional[str] = ..., rank: _Optional[int] = ..., region_id: _Optional[int] = ..., step: _Optional[int] = ..., loss_sum: _Optional[float] = ..., count: _Optional[int] = ..., linear: _Optional[float] = ..., quadratic: _Optional[float] = ..., curvature: _Optional[float] = ..., train_seconds: _Optional[float] = ..., selection_seconds: _Optional[float] = ..., initial_loss_sum: _Optional[float] = ..., ranks: _Optional[int] = ...) -> None: ...

class CheckDecision(_message.Message):
    __slots__ = ("region_id", "step", "new_region", "loss", "predicted", "relative_error")
    REGION_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    NEW_REGION_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_FIELD_NUMBER: _ClassVar[int]
    RELATIVE_ERROR_FIELD_NUMBER: _ClassVar[int]
    region_id: int
    step: int
    new_region: bool
    loss: float
    predicted: float
    relative_error: float
    def __init__(self, region_id: _Optional[int] = ..., step: _Optional[int] = ..., new_region: _Optional[bool] = ..., loss: _Optional[float] = ..., predicted: _Optional[float] = ..., relative_error: _Optional[float] = ...) -> None: ...

class JobStatusRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class JobStatusReply(_message.Message):
    __slots__ = ("json", "status")
    JSON_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    json: str
    status: JobStatus
    def __init__(self, json: _Optional[str] = ..., status: _Optional[_Union[JobStatus, _Mapping]] = ...) -> None: ...

class JobStatus(_message.Message):
    __slots__ = ("job_id", "config", "total_steps", "step", "finished", "pool_size", "pool_per_class", "class_sizes", "dropped", "regions", "trainers", "next_region", "selection_side", "selection_side_reason", "regions_omitted", "omitted_totals")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    POOL_SIZE_FIELD_NUMBER: _ClassVar[int]
    POOL_PER_CLASS_FIELD_NUMBER: _ClassVar[int]
    CLASS_SIZES_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    TRAINERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_REGION_FIELD_NUMBER: _ClassVar[int]
    SELECTION_SIDE_FIELD_NUMBER: _ClassVar[int]
    SELECTION_SIDE_REASON_FIELD_NUMBER: _ClassVar[int]
    REGIONS_OMITTED_FIELD_NUMBER: _ClassVar[int]
    OMITTED_TOTALS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    config: JobConfig
    total_steps: int
    step: int
    finished: bool
    pool_size: int
    pool_per_class: _containers.RepeatedScalarFieldContainer[int]
    class_sizes: _containers.RepeatedScalarFieldContainer[int]
    dropped: int
    regions: _containers.RepeatedCompositeFieldContainer[RegionStats]
    trainers: _containers.RepeatedCompositeFieldContainer[TrainerTime]
    next_region: RegionStats
    selection_side: str
    selection_side_reason: str
    regions_omitted: int
    omitted_totals: RegionTotals
    def __init__(self, job_id: _Optional[str] = ..., config: _Optional[_Union[JobConfig, _Mapping]] = ..., total_steps: _Optional[int] = ..., step: _Optional[int] = ..., finished: _Optional[bool] = ..., pool_size: _Optional[int] = ..., pool_per_class: _Optional[_Iterable[int]] = ..., class_sizes: _Optional[_Iterable[int]] = ..., dropped: _Optional[int] = ..., regions: _Optional[_Iterable[_Union[RegionStats, _Mapping]]] = ..., trainers: _Optional[_Iterable[_Union[TrainerTime, _Mapping]]] = ..., next_region: _Optional[_Union[RegionStats, _Mapping]] = ..., selection_side: _Optional[str] = ..., selection_side_reason: _Optional[str] = ..., regions_omitted: _Optional[int] = ..., omitted_totals: _Optional[_Union[RegionTotals, _Mapping]] = ...) -> None: ...

class RegionTotals(_message.Message):
    __slots__ = ("regions", "crest", "random", "fallback", "to_crest", "to_random", "last_kind", "ended_check", "ended_bound", "ended_budget", "checks", "checks_exceeded", "dropped", "readmitted", "check_interval_sum", "num_coresets_sum")
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    CREST_FIELD_NUMBER: _ClassVar[int]
    RANDOM_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    TO_CREST_FIELD_NUMBER: _ClassVar[int]
    TO_RANDOM_FIELD_NUMBER: _ClassVar[int]
    LAST_KIND_FIELD_NUMBER: _ClassVar[int]
    ENDED_CHECK_FIELD_NUMBER: _ClassVar[int]
    ENDED_BOUND_FIELD_NUMBER: _ClassVar[int]
    ENDED_BUDGET_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    CHECKS_EXCEEDED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    READMITTED_FIELD_NUMBER: _ClassVar[int]
    CHECK_INTERVAL_SUM_FIELD_NUMBER: _ClassVar[int]
    NUM_CORESETS_SUM_FIELD_NUMBER: _ClassVar[int]
    regions: int
    crest: int
    random: int
    fallback: int
    to_crest: int
    to_random: int
    last_kind: str
    ended_check: int
    ended_bound: int
    ended_budget: int
    checks: int
    checks_exceeded: int
    dropped: int
    readmitted: int
    check_interval_sum: int
    num_coresets_sum: int
    def __init__(self, regions: _Optional[int] = ..., crest: _Optional[int] = ..., random: _Optional[int] = ..., fallback: _Optional[int] = ..., to_crest: _Optional[int] = ..., to_random: _Optional[int] = ..., last_kind: _Optional[str] = ..., ended_check: _Optional[int] = ..., ended_bound: _Optional[int] = ..., ended_budget: _Optional[int] = ..., checks: _Optional[int] = ..., checks_exceeded: _Optional[int] = ..., dropped: _Optional[int] = ..., readmitted: _Optional[int] = ..., check_interval_sum: _Optional[int] = ..., num_coresets_sum: _Optional[int] = ...) -> None: ...

class RegionStats(_message.Message):
    __slots__ = ("region_id", "start_step", "end_step", "end_reason", "num_coresets", "check_interval", "num_candidates", "pool_size", "pool_per_class", "fallback", "dropped", "readmitted", "candidate_loss", "selected_loss", "weight_quantiles", "initial_loss", "curvature", "checks", "mode", "decision", "coreset_error", "random_error", "embedded_by", "staleness", "checks_omitted", "excluded", "monitor", "auto_test", "probe_loss", "loss_rate_coresets", "loss_rate_random", "loss_excess_coresets")
    REGION_ID_FIELD_NUMBER: _ClassVar[int]
    START_STEP_FIELD_NUMBER: _ClassVar[int]
    END_STEP_FIELD_NUMBER: _ClassVar[int]
    END_REASON_FIELD_NUMBER: _ClassVar[int]
    NUM_CORESETS_FIELD_NUMBER: _ClassVar[int]
    CHECK_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    NUM_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    POOL_SIZE_FIELD_NUMBER: _ClassVar[int]
    POOL_PER_CLASS_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    READMITTED_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_LOSS_FIELD_NUMBER: _ClassVar[int]
    SELECTED_LOSS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_QUANTILES_FIELD_NUMBER: _ClassVar[int]
    INITIAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    CURVATURE_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    CORESET_ERROR_FIELD_NUMBER: _ClassVar[int]
    RANDOM_ERROR_FIELD_NUMBER: _ClassVar[int]
    EMBEDDED_BY_FIELD_NUMBER: _ClassVar[int]
    STALENESS_FIELD_NUMBER: _ClassVar[int]
    CHECKS_OMITTED_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_FIELD_NUMBER: _ClassVar[int]
    MONITOR_FIELD_NUMBER: _ClassVar[int]
    AUTO_TEST_FIELD_NUMBER: _ClassVar[int]
    PROBE_LOSS_FIELD_NUMBER: _ClassVar[int]
    LOSS_RATE_CORESETS_FIELD_NUMBER: _ClassVar[int]
    LOSS_RATE_RANDOM_FIELD_NUMBER: _ClassVar[int]
    LOSS_EXCESS_CORESETS_FIELD_NUMBER: _ClassVar[int]
    region_id: int
    start_step: int
    end_step: int
    end_reason: str
    num_coresets: int
    check_interval: int
    num_candidates: int
    pool_size: int
    pool_per_class: _containers.RepeatedScalarFieldContainer[int]
    fallback: bool
    dropped: int
    readmitted: int
    candidate_loss: float
    selected_loss: float
    weight_quantiles: _containers.RepeatedScalarFieldContainer[float]
    initial_loss: float
    curvature: float
    checks: _containers.RepeatedCompositeFieldContainer[CheckRecord]
    mode: str
    decision: str
    coreset_error: float
    random_error: float
    embedded_by: str
    staleness: int
    checks_omitted: int
    excluded: int
    monitor: str
    auto_test: str
    probe_loss: float
    loss_rate_coresets: float
    loss_rate_random: float
    loss_excess_coresets: float
    def __init__(self, region_id: _Optional[int] = ..., start_step: _Optional[int] = ..., end_step: _Optional[int] = ..., end_reason: _Optional[str] = ..., num_coresets: _Optional[int] = ..., check_interval: _Optional[int] = ..., num_candidates: _Optional[int] = ..., pool_size: _Optional[int] = ..., pool_per_class: _Optional[_Iterable[int]] = ..., fallback: _Optional[bool] = ..., dropped: _Optional[int] = ..., readmitted: _Optional[int] = ..., candidate_loss: _Optional[float] = ..., selected_loss: _Optional[float] = ..., weight_quantiles: _Optional[_Iterable[float]] = ..., initial_loss: _Optional[float] = ..., curvature: _Optional[float] = ..., checks: _Optional[_Iterable[_Union[CheckRecord, _Mapping]]] = ..., mode: _Optional[str] = ..., decision: _Optional[str] = ..., coreset_error: _Optional[float] = ..., random_error: _Optional[float] = ..., embedded_by: _Optional[str] = ..., staleness: _Optional[int] = ..., checks_omitted: _Optional[int] = ..., excluded: _Optional[int] = ..., monitor: _Optional[str] = ..., auto_test: _Optional[str] = ..., probe_loss: _Optional[float] = ..., loss_rate_coresets: _Optional[float] = ..., loss_rate_random: _Optional[float] = ..., loss_excess_coresets: _Optional[float] = ...) -> None: ...

class CheckRecord(_message.Message):
    __slots__ = ("step", "loss", "predicted", "relative_error", "new_region")
    STEP_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_FIELD_NUMBER: _ClassVar[int]
    RELATIVE_ERROR_FIELD_NUMBER: _ClassVar[int]
    NEW_REGION_FIELD_NUMBER: _ClassVar[int]
    step: int
    loss: float
    predicted: float
    relative_error: float
    new_region: bool
    def __init__(self, step: _Optional[int] = ..., loss: _Optional[float] = ..., predicted: _Optional[float] = ..., relative_error: _Optional[float] = ..., new_region: _Optional[bool] = ...) -> None: ...

class TrainerTime(_message.Message):
    __slots__ = ("rank", "train_seconds", "selection_seconds")
    RANK_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SELECTION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    rank: int
    train_seconds: float
    selection_seconds: float
    def __init__(self, rank: _Optional[int] = ..., train_seconds: _Optional[float] = ..., selection_seconds: _Optional[float] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("after",)
    AFTER_FIELD_NUMBER: _ClassVar[int]
    after: str
    def __init__(self, after: _Optional[str] = ...) -> None: ...

class JobListing(_message.Message):
    __slots__ = ("job_id", "name", "step", "total_steps", "finished", "world_size", "finished_at", "expires_at")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    name: str
    step: int
    total_steps: int
    finished: bool
    world_size: int
    finished_at: float
    expires_at: float
    def __init__(self, job_id: _Optional[str] = ..., name: _Optional[str] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ..., finished: _Optional[bool] = ..., world_size: _Optional[int] = ..., finished_at: _Optional[float] = ..., expires_at: _Optional[float] = ...) -> None: ...

class ListJobsReply(_message.Message):
    __slots__ = ("jobs", "more")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobListing]
    more: bool
    def __init__(self, jobs: _Optional[_Iterable[_Union[JobListing, _Mapping]]] = ..., more: _Optional[bool] = ...) -> None: ...

class DeleteJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class DeleteJobReply(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: _Optional[bool] = ...) -> None: ...

class ModelChunk(_message.Message):
    __slots__ = ("header", "artifact", "inputs")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    header: ModelHeader
    artifact: bytes
    inputs: Array
    def __init__(self, header: _Optional[_Union[ModelHeader, _Mapping]] = ..., artifact: _Optional[bytes] = ..., inputs: _Optional[_Union[Array, _Mapping]] = ...) -> None: ...

class ModelHeader(_message.Message):
    __slots__ = ("job_id", "artifact_bytes", "input_shape", "trainer_side", "num_weights")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_BYTES_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    TRAINER_SIDE_FIELD_NUMBER: _ClassVar[int]
    NUM_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    artifact_bytes: int
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    trainer_side: str
    num_weights: int
    def __init__(self, job_id: _Optional[str] = ..., artifact_bytes: _Optional[int] = ..., input_shape: _Optional[_Iterable[int]] = ..., trainer_side: _Optional[str] = ..., num_weights: _Optional[int] = ...) -> None: ...

class WeightsChunk(_message.Message):
    __slots__ = ("job_id", "version", "size", "offset", "weights")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    version: int
    size: int
    offset: int
    weights: Array
    def __init__(self, job_id: _Optional[str] = ..., version: _Optional[int] = ..., size: _Optional[int] = ..., offset: _Optional[int] = ..., weights: _Optional[_Union[Array, _Mapping]] = ...) -> None: ...

class PublishAck(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
