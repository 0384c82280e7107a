"""The one typed settings object. Every module reads configuration through :func:`get_settings`.

Environment variable names are the field names in upper case (``REDIS_URL``, ``DATA_DIR``,
``STORAGE_BACKEND`` ...). A ``.env`` file in the working directory is read too. Nothing else in the
project reads ``os.environ``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Values shipped as defaults for secrets. They are fine on a laptop and refused anywhere else.
DEV_SECRET = "dev-insecure-change-me"  # noqa: S105 - a placeholder that the validator refuses outside development
DEV_API_KEY = "dev-api-key"


class Settings(BaseSettings):
    """Configuration for every process of the system (producers, workers, API, Flower, CLI)."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        validate_default=True,
    )

    environment: Literal["development", "test", "production"] = Field(
        "development", description="Secrets must be set explicitly anywhere but development."
    )
    log_level: str = Field("INFO", description="Log level of workers, API and CLI.")
    log_json: bool = Field(False, description="Emit structured JSON logs (one object a line).")

    # --- broker, results, cache -------------------------------------------------------------
    redis_url: str = Field(
        "redis://localhost:6379/0",
        description="Redis used for broker, results and cache unless one of those is overridden.",
    )
    broker_url: str | None = Field(
        None, description="Celery broker (redis:// or amqp://); default REDIS_URL."
    )
    result_backend: str | None = Field(None, description="Celery result backend; default REDIS_URL.")
    cache_url: str | None = Field(None, description="Redis for the cache service; default REDIS_URL.")
    data_dir: Path = Field(Path("./var"), description="Root directory of the embedded backends.")

    # --- the task fabric ----------------------------------------------------------------------
    task_soft_time_limit: int = Field(
        300, ge=1, description="Seconds before SoftTimeLimitExceeded is raised."
    )
    task_time_limit: int = Field(360, ge=1, description="Seconds before a task's process is killed.")
    max_delay_seconds: int = Field(
        3600, ge=0, description="Longest delay_seconds accepted by enqueue (bounds the visibility timeout)."
    )
    max_ttl_seconds: int = Field(7 * 24 * 3600, ge=1, description="Longest ttl_seconds accepted by enqueue.")
    max_retries: int = Field(5, ge=0, description="Retries of a transient error before dead-lettering.")
    retry_backoff_max: int = Field(300, ge=1, description="Longest pause between two retries, seconds.")
    max_deliveries: int = Field(
        5, ge=1, description="Deliveries of one attempt (worker lost each time) before dead-lettering."
    )
    result_expires: int = Field(
        7 * 24 * 3600, ge=60, description="Seconds task results and statuses are kept."
    )
    visibility_margin: int = Field(60, ge=1, description="Extra seconds of Redis visibility timeout.")
    unacked_restore_interval: int = Field(
        10,
        ge=1,
        description="Seconds between a worker's sweeps for messages whose visibility timeout ran out.",
    )
    worker_lost_after: int = Field(
        60,
        ge=5,
        le=3600,
        description="Seconds within which the messages a dead worker held are back on their queues (Redis).",
    )
    worker_concurrency: int | None = Field(None, ge=1, description="Worker processes; default: CPU count.")
    bulk_envelope_size: int = Field(
        500, ge=1, le=10_000, description="Logical messages enqueue_many packs into one broker message."
    )

    # --- storage --------------------------------------------------------------------------------
    storage_backend: Literal["local", "minio"] = Field(
        "local", description="Object store: local (files under DATA_DIR) or minio."
    )
    storage_signing_key: SecretStr = Field(
        SecretStr(DEV_SECRET), description="HMAC key for the local store's presigned URLs."
    )
    storage_public_url: str = Field(
        "http://localhost:8000", description="Base URL that presigned URLs of the local store point at."
    )
    minio_endpoint: str = Field(
        "localhost:9000", description="host:port of MinIO/S3 as the workers reach it."
    )
    minio_public_endpoint: str | None = Field(
        None, description="host:port (or URL) browsers reach; presigned URLs are signed for it."
    )
    minio_access_key: str = Field("minioadmin", description="MinIO/S3 access key.")
    minio_secret_key: SecretStr = Field(SecretStr(DEV_SECRET), description="MinIO/S3 secret key.")
    minio_secure: bool = Field(False, description="Talk to MinIO over TLS.")
    minio_region: str = Field("us-east-1", description="S3 region presigned URLs are signed for.")

    # --- search ---------------------------------------------------------------------------------
    search_backend: Literal["sqlite", "elasticsearch"] = Field(
        "sqlite", description="Search: sqlite (FTS5 under DATA_DIR) or elasticsearch."
    )
    elasticsearch_url: str = Field("http://localhost:9200", description="Elasticsearch base URL.")
    elasticsearch_api_key: SecretStr | None = Field(
        None, description="Elasticsearch API key, if the cluster needs one."
    )
    elasticsearch_index_prefix: str = Field("wft-", description="Prefix of every index name.")
    search_busy_timeout: float = Field(
        30.0, gt=0, description="Seconds a writer of the embedded search waits for another process's write."
    )
    elasticsearch_timeout: float = Field(10.0, gt=0, description="Seconds per Elasticsearch request.")
    elasticsearch_max_retries: int = Field(
        3, ge=0, description="Retries of a request or bulk chunk on connection errors, 429 and 502/503/504."
    )
    elasticsearch_initial_backoff: float = Field(
        0.5, gt=0, description="First pause before retrying a 429, seconds; doubles on each retry."
    )
    elasticsearch_bulk_chunk_size: int = Field(1000, ge=1, description="Documents per bulk request.")

    # --- vectors and embeddings -------------------------------------------------------------------
    vector_backend: Literal["embedded", "weaviate"] = Field(
        "embedded", description="Vectors: embedded (SQLite + HNSW under DATA_DIR) or weaviate."
    )
    weaviate_url: str = Field("http://localhost:8080", description="Weaviate HTTP URL.")
    weaviate_grpc_port: int = Field(50051, description="Weaviate gRPC port.")
    weaviate_api_key: SecretStr | None = Field(None, description="Weaviate API key, if the server needs one.")
    vector_hnsw_threshold: int = Field(
        20_000, ge=1, description="Live vectors in a collection above which the embedded engine uses HNSW."
    )
    vector_hnsw_m: int = Field(16, ge=4, description="HNSW graph degree (faiss M) of the embedded engine.")
    vector_hnsw_ef_construction: int = Field(80, ge=8, description="HNSW build beam width (efConstruction).")
    vector_hnsw_ef_search: int = Field(64, ge=8, description="HNSW query beam width (efSearch) at least.")
    vector_busy_timeout_ms: int = Field(
        30_000, ge=0, description="How long an embedded-vector writer waits for another process's lock."
    )
    embeddings: Literal["local", "openai"] = Field(
        "local",
        description="Embeddings: local (an offline model from a package) or openai (OpenAI-compatible).",
    )
    local_embedding_model: Literal["minilm", "minilm-l3", "static", "e5"] = Field(
        "minilm",
        description="Local model: minilm (all-MiniLM-L6-v2 int8, 385-dim; default), minilm-l3 (faster, "
        "weaker; [minilm-l3] extra), static (64-dim, fastest, weakest) or e5 (384-dim, best, slowest; "
        "[e5] extra). Changing it needs `wft reindex`.",
    )
    openai_base_url: str | None = Field(
        None, description="OpenAI-compatible base URL (None: api.openai.com)."
    )
    openai_api_key: SecretStr | None = Field(
        None, description="Key for the OpenAI-compatible server (embeddings and ai steps)."
    )
    embedding_model: str = Field(
        "text-embedding-3-small", description="Embedding model name on the OpenAI-compatible server."
    )
    embedding_dimensions: int | None = Field(
        None, ge=1, description="Dimensions asked of the OpenAI model (None: the model's own, learned)."
    )
    embedding_timeout: float = Field(60.0, gt=0, description="Seconds one embeddings request may take.")
    embedding_max_retries: int = Field(
        6, ge=0, description="Retries of an embeddings request answered 408/409/429/5xx or not answered."
    )
    embedding_retry_max_wait: float = Field(
        60.0, gt=0, description="Longest pause between two embeddings retries, Retry-After included."
    )
    embedding_max_inputs: int = Field(2048, ge=1, description="Most texts in one embeddings request.")
    embedding_max_request_tokens: int = Field(
        300_000, ge=1, description="Most (estimated) tokens in one embeddings request."
    )
    embedding_max_input_tokens: int = Field(
        8192,
        ge=1,
        description="Longest text in (estimated) tokens; longer ones are truncated, with a warning.",
    )
    chat_model: str = Field("gpt-4o-mini", description="Chat model the ai workflow step uses.")

    # --- workflows --------------------------------------------------------------------------------
    http_allow_private: bool = Field(
        False,
        description="Let http steps reach private, loopback, link-local and reserved addresses (tests, labs)",
    )
    workflow_step_timeout: float = Field(
        60.0, gt=0, description="Seconds a workflow step may run when its node sets no timeout_seconds."
    )
    workflow_max_parallel_steps: int = Field(
        4, ge=1, description="Steps of one execution that may run at the same time (independent branches)."
    )
    workflow_http_max_response_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, description="Largest response body an http step reads."
    )

    # --- resilience, metrics ----------------------------------------------------------------------
    circuit_breaker_enabled: bool = Field(
        True, description="Guard backend calls with circuit breakers shared through Redis."
    )
    circuit_failure_threshold: int = Field(
        5,
        ge=1,
        description="Backend failures within CIRCUIT_WINDOW seconds (all processes) that open a breaker.",
    )
    circuit_timeout: float = Field(
        60.0, gt=0, description="Seconds a breaker stays open before it lets one probe call through."
    )
    circuit_window: float = Field(60.0, gt=0, description="Seconds over which a breaker counts failures.")
    metrics_port: int = Field(9808, description="Port `python -m services.metrics` serves /metrics on.")
    metrics_flush_interval: float = Field(
        0.5, gt=0, le=60,
        description="Seconds between two writes of a worker process's task metrics to Redis (and at exit).",
    )  # fmt: skip

    # --- batching (index and vector writes) --------------------------------------------------------
    batch_max_size: int = Field(
        500, ge=1, description="Most index or vector documents one bulk write of a worker process takes."
    )
    batch_flush_interval: float = Field(
        0.05,
        gt=0,
        le=60,
        description="Seconds a bulk write waits for more messages before it is written anyway.",
    )

    # --- maintenance (beat) -------------------------------------------------------------------------
    artifact_retention_days: float = Field(
        30.0, gt=0, description="Days finished execution records and their artifacts are kept."
    )
    maintenance_expire_interval: float = Field(
        3600.0, ge=1, description="Seconds between two runs of the expiry task (Celery beat)."
    )
    maintenance_reconcile_interval: float = Field(
        6 * 3600.0, ge=1, description="Seconds between two reconciliations of the indexes with the store."
    )
    maintenance_max_expired_per_run: int = Field(
        10_000, ge=1, description="Most executions one expiry run deletes (the rest wait for the next)."
    )
    beat_lock_timeout: int = Field(
        30,
        ge=5,
        description="Seconds the running beat's lock outlives its last tick: how soon a standby beat takes "
        "over from one that died.",
    )

    # --- API, Flower ------------------------------------------------------------------------------
    api_keys: SecretStr = Field(
        SecretStr(f"{DEV_API_KEY}:admin"),
        description="Comma-separated key:scope[+scope] pairs, e.g. 'k1:admin,k2:read+enqueue'.",
    )
    api_max_body_bytes: int = Field(
        100 * 1024 * 1024, ge=1024, description="Largest request body the HTTP API accepts."
    )
    flower_user: str = Field("admin", description="Flower basic-auth user.")
    flower_password: SecretStr = Field(SecretStr(DEV_SECRET), description="Flower basic-auth password.")
    flower_port: int = Field(5555, description="Port Flower listens on.")
    # Named and typed as Flower's own options: Flower reads FLOWER_<OPTION> from the environment too, and
    # must parse the same value the same way.
    flower_state_save_interval: int = Field(
        60_000,
        ge=1000,
        description="Milliseconds between two saves of Flower's state: what a crash of Flower can lose.",
    )
    flower_purge_offline_workers: int = Field(
        3600, ge=1, description="Seconds after which Flower stops showing a worker that went offline."
    )
    api_port: int = Field(8000, description="Port the HTTP API listens on.")
    api_host: str = Field("127.0.0.1", description="Address the HTTP API binds (0.0.0.0: every interface).")
    health_check_timeout: float = Field(
        5.0, gt=0, description="Seconds each readiness check (one backend) may take before it counts as down."
    )
    health_ping_timeout: float = Field(
        1.0, gt=0, description="Seconds readiness waits for workers to answer a ping."
    )

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @model_validator(mode="after")
    def _limits_consistent(self) -> Settings:
        if self.task_soft_time_limit >= self.task_time_limit:
            raise ValueError(
                f"TASK_SOFT_TIME_LIMIT ({self.task_soft_time_limit}) must be below "
                f"TASK_TIME_LIMIT ({self.task_time_limit}) so tasks can clean up before they are killed"
            )
        return self

    @model_validator(mode="after")
    def _no_default_secrets_outside_development(self) -> Settings:
        if self.environment == "development":
            return self
        defaults = {
            "STORAGE_SIGNING_KEY": self.storage_signing_key.get_secret_value() == DEV_SECRET,
            "FLOWER_PASSWORD": self.flower_password.get_secret_value() == DEV_SECRET,
            "API_KEYS": DEV_API_KEY in self.api_keys.get_secret_value(),
            "MINIO_SECRET_KEY": self.storage_backend == "minio"
            and self.minio_secret_key.get_secret_value() == DEV_SECRET,
        }
        bad = [name for name, is_default in defaults.items() if is_default]
        if bad:
            raise ValueError(
                f"ENVIRONMENT={self.environment} but {', '.join(bad)} still hold the development default; "
                "set them to secret values of your own"
            )
        return self

    # --- derived values ---------------------------------------------------------------------------
    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def effective_result_backend(self) -> str:
        return self.result_backend or self.redis_url

    @property
    def effective_cache_url(self) -> str:
        return self.cache_url or self.redis_url

    @property
    def visibility_timeout(self) -> int:
        """Redis re-delivers an unacknowledged message after this many seconds.

        It must outlast the longest a message can legitimately stay unacknowledged: a delayed message
        waits in the worker for its countdown (or a retry for its backoff) and then runs up to the hard
        time limit. A shorter timeout would hand the same message to a second worker.
        """
        longest_wait = max(self.max_delay_seconds, self.retry_backoff_max)
        return self.task_time_limit + longest_wait + self.visibility_margin


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment (and ``.env``)."""
    return Settings()


def reload_settings() -> Settings:
    """Forget the cached settings and read the environment again (tests, CLI overrides)."""
    get_settings.cache_clear()
    return get_settings()
