"""Settings of every process, read from the environment with pydantic-settings.

Names every deployment shares (``DATABASE_URL``, ``NATS_URL``, ``PORT``, ``FETCH_ALLOW_HOSTS``) are
read without prefix; the rest carry ``KASHF_`` or a per-service prefix.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Environment = Literal["development", "test", "production"]
Device = Literal["auto", "cpu", "cuda"]


def _alias(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class CommonSettings(BaseSettings):
    """What every Kashf process reads."""

    model_config = SettingsConfigDict(env_prefix="KASHF_", extra="ignore", populate_by_name=True)

    environment: Environment = Field("development", validation_alias=_alias("KASHF_ENVIRONMENT"))
    nats_url: str = Field("nats://127.0.0.1:4222", validation_alias=_alias("NATS_URL", "KASHF_NATS_URL"))
    models_dir: Path = Field(Path("models"), validation_alias=_alias("KASHF_MODELS_DIR"))
    text_model: str = Field("text/multilingual-e5-small", validation_alias=_alias("KASHF_TEXT_MODEL"))
    image_model: str = Field("image/efficientnet-lite0", validation_alias=_alias("KASHF_IMAGE_MODEL"))
    device: Device = Field("auto", validation_alias=_alias("KASHF_DEVICE"))
    log_level: str = Field("INFO", validation_alias=_alias("KASHF_LOG_LEVEL"))
    log_json: bool = Field(False, validation_alias=_alias("KASHF_LOG_JSON"))
    health_port: int = Field(8080, validation_alias=_alias("KASHF_HEALTH_PORT"))
    health_host: str = Field("0.0.0.0", validation_alias=_alias("KASHF_HEALTH_HOST"))
    drain_timeout_s: float = Field(20.0, validation_alias=_alias("KASHF_DRAIN_TIMEOUT_S"))
    max_video_bytes: int = Field(200 * 2**20, validation_alias=_alias("KASHF_MAX_VIDEO_BYTES"))
    max_image_bytes: int = Field(20 * 2**20, validation_alias=_alias("KASHF_MAX_IMAGE_BYTES"))
    # Servers of a JetStream cluster that keep each stream, KV and object store (heads, events, uploads, video
    # jobs); 3 survives losing one server. Applied to existing ones at start (shared.bus.streams).
    jetstream_replicas: int = Field(1, ge=1, le=5, validation_alias=_alias("KASHF_JETSTREAM_REPLICAS"))

    @property
    def text_model_dir(self) -> Path:
        return self.models_dir / self.text_model

    @property
    def image_model_dir(self) -> Path:
        return self.models_dir / self.image_model


class DatabaseSettings(CommonSettings):
    """Processes that use Postgres (gateway, trainer, migrations); the model services never see its URL."""

    database_url: str = Field(
        "postgresql+asyncpg://postgres@127.0.0.1:5432/test",
        validation_alias=_alias("DATABASE_URL", "KASHF_DATABASE_URL"),
    )

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str) -> str:
        # Operators paste plain libpq URLs; SQLAlchemy's async engine needs the asyncpg driver named.
        for plain in ("postgresql://", "postgres://"):
            if value.startswith(plain):
                return "postgresql+asyncpg://" + value[len(plain):]
        return value


class GatewaySettings(DatabaseSettings):
    """The HTTP gateway: limits every request is held to."""

    model_config = SettingsConfigDict(env_prefix="KASHF_GATEWAY_", extra="ignore", populate_by_name=True)

    host: str = Field("0.0.0.0", validation_alias=_alias("HOST", "KASHF_GATEWAY_HOST"))
    port: int = Field(8000, validation_alias=_alias("PORT", "KASHF_GATEWAY_PORT"))
    token_pepper: SecretStr = Field(
        SecretStr("dev-pepper-change-me"), validation_alias=_alias("KASHF_TOKEN_PEPPER")
    )
    max_body_bytes: int = Field(2 * 2**20, validation_alias=_alias("KASHF_MAX_BODY_BYTES"))
    max_upload_bytes: int = Field(200 * 2**20, validation_alias=_alias("KASHF_MAX_UPLOAD_BYTES"))
    max_items: int = Field(256, validation_alias=_alias("KASHF_MAX_ITEMS"))
    max_text_chars: int = Field(5000, validation_alias=_alias("KASHF_MAX_TEXT_CHARS"))
    rate_per_minute: int = Field(600, validation_alias=_alias("KASHF_RATE_PER_MINUTE"))
    rate_burst: int = Field(120, validation_alias=_alias("KASHF_RATE_BURST"))
    # Requests whose token this replica has not found before, per client address: each costs a token lookup.
    rate_per_ip_per_minute: int = Field(300, validation_alias=_alias("KASHF_RATE_PER_IP_PER_MINUTE"))
    rate_per_ip_burst: int = Field(100, validation_alias=_alias("KASHF_RATE_PER_IP_BURST"))
    # The reverse proxies in front of the gateway (IP addresses or CIDR networks, comma-separated): only a
    # connection from one of them has its X-Forwarded-For / X-Forwarded-Proto believed, and the client's address
    # is then the nearest one in X-Forwarded-For that is not a trusted proxy. Empty (the default): no one; the
    # connection's own address is the client's (the per-address limit, logs). uvicorn's FORWARDED_ALLOW_IPS is
    # read as the same setting.
    trusted_proxies: str = Field("", validation_alias=_alias("KASHF_TRUSTED_PROXIES", "FORWARDED_ALLOW_IPS"))
    # A token a lookup did not find is refused without another lookup for this long (0: no negative cache).
    token_unknown_cache_s: float = Field(30.0, validation_alias=_alias("KASHF_TOKEN_UNKNOWN_CACHE_S"))
    # Slow clients: request headers must arrive within header_timeout_s; a body within body_timeout_s plus
    # one second per body_min_rate bytes received (answered 408 and closed otherwise).
    header_timeout_s: float = Field(10.0, gt=0, validation_alias=_alias("KASHF_HEADER_TIMEOUT_S"))
    body_timeout_s: float = Field(30.0, gt=0, validation_alias=_alias("KASHF_BODY_TIMEOUT_S"))
    body_min_rate: int = Field(4096, gt=0, validation_alias=_alias("KASHF_BODY_MIN_RATE"))
    outbox_sweep_s: float = Field(2.0, validation_alias=_alias("KASHF_OUTBOX_SWEEP_S"))
    # A revoked token keeps working on a replica for at most this long (0: look up every request).
    token_cache_s: float = Field(5.0, validation_alias=_alias("KASHF_TOKEN_CACHE_S"))
    # A dataset's tags, kind and head version as tagging reads them: changes reach this replica at once
    # (by broadcast from others and the trainer), or after this long if a broadcast was lost (0: no cache).
    dataset_cache_s: float = Field(5.0, validation_alias=_alias("KASHF_DATASET_CACHE_S"))
    db_pool_size: int = Field(20, validation_alias=_alias("KASHF_DB_POOL_SIZE"))
    # keep_inputs datasets: texts and images of tag calls kept as pool items, the oldest dropped beyond this.
    max_input_items: int = Field(10_000, ge=0, validation_alias=_alias("KASHF_MAX_INPUT_ITEMS"))
    # search: datasets' embeddings held in memory per replica (least recently used dropped), each for
    # search_cache_s at most: new items show in search within that.
    search_cache_datasets: int = Field(16, ge=0, validation_alias=_alias("KASHF_SEARCH_CACHE_DATASETS"))
    search_cache_s: float = Field(30.0, ge=0, validation_alias=_alias("KASHF_SEARCH_CACHE_S"))
    # Webhook URLs (create_webhook) are refused at once when they name a private address or port these do not
    # allow; the trainer checks them again, resolved, when it delivers (InferenceSettings' FETCH_ALLOW_*).
    fetch_allow_hosts: str = Field("", validation_alias=_alias("FETCH_ALLOW_HOSTS"))
    fetch_allow_ports: str = Field("80,443", validation_alias=_alias("FETCH_ALLOW_PORTS"))
    # Webhooks per account: every training event is one POST per webhook (400 beyond, naming the setting).
    max_webhooks: int = Field(20, ge=0, validation_alias=_alias("KASHF_MAX_WEBHOOKS"))
    # None: the subject's own timeout (shared/subjects.py).
    text_timeout_s: float | None = Field(None, validation_alias=_alias("KASHF_GATEWAY_TEXT_TIMEOUT_S"))
    vision_timeout_s: float | None = Field(None, validation_alias=_alias("KASHF_GATEWAY_VISION_TIMEOUT_S"))
    video_timeout_s: float | None = Field(None, validation_alias=_alias("KASHF_GATEWAY_VIDEO_TIMEOUT_S"))

    @field_validator("fetch_allow_ports")
    @classmethod
    def _ports(cls, value: str) -> str:
        return InferenceSettings._ports(value)

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, value: str) -> str:
        """Each entry an address or a network, written as uvicorn compares them (it would take a malformed
        entry, or a network with host bits such as 10.0.0.1/8, for a name that never matches)."""
        entries = []
        for entry in (e.strip() for e in value.split(",")):
            if not entry:
                continue
            try:
                entries.append(str(ipaddress.ip_network(entry, strict=False)) if "/" in entry
                               else str(ipaddress.ip_address(entry)))
            except ValueError:
                raise ValueError(
                    f"KASHF_TRUSTED_PROXIES: {entry!r} is not an IP address or CIDR network (trusting everyone, "
                    "'*', would let any client choose the address it is limited and logged by)"
                ) from None
        return ",".join(entries)

    @model_validator(mode="after")
    def _no_placeholder_secrets(self) -> GatewaySettings:
        if self.environment == "production" and self.token_pepper.get_secret_value().startswith("dev-"):
            raise ValueError("KASHF_TOKEN_PEPPER must be set to a real secret in production")
        return self


class InferenceSettings(CommonSettings):
    """What the model services share: batching and queue limits."""

    max_batch: int = Field(32, validation_alias=_alias("KASHF_MAX_BATCH"))
    max_wait_ms: float = Field(4.0, validation_alias=_alias("KASHF_MAX_WAIT_MS"))
    max_queue: int = Field(1024, validation_alias=_alias("KASHF_MAX_QUEUE"))
    concurrency: int = Field(64, validation_alias=_alias("KASHF_CONCURRENCY"))
    # None: chosen per device (modelkit/onnx/layout.py): on CPU up to 4 model calls at once, the
    # cores shared out among them as intra-op threads; on GPU one call at a time.
    model_workers: int | None = Field(None, ge=1, validation_alias=_alias("KASHF_MODEL_WORKERS"))
    threads: int | None = Field(None, ge=1, validation_alias=_alias("KASHF_THREADS"))
    # Datasets' heads kept loaded per replica (least recently used dropped, read again from the object store
    # when next asked): memory is about this many times tags x embedding dimensions x 4 bytes.
    head_cache_entries: int = Field(256, ge=1, validation_alias=_alias("KASHF_HEAD_CACHE_ENTRIES"))
    fetch_allow_hosts: str = Field("", validation_alias=_alias("FETCH_ALLOW_HOSTS"))
    # Ports an image or video URL may name on a public host (allowlisted hosts: any port).
    fetch_allow_ports: str = Field("80,443", validation_alias=_alias("FETCH_ALLOW_PORTS"))

    @field_validator("fetch_allow_ports")
    @classmethod
    def _ports(cls, value: str) -> str:
        ports = [p.strip() for p in value.split(",") if p.strip()]
        if not ports or not all(p.isdigit() and 1 <= int(p) <= 65535 for p in ports):
            raise ValueError("FETCH_ALLOW_PORTS: a comma-separated list of port numbers (1-65535)")
        return ",".join(ports)


class TextServiceSettings(InferenceSettings):
    model_config = SettingsConfigDict(env_prefix="KASHF_TEXT_", extra="ignore", populate_by_name=True)

    # Measured (bench/text.py): no wait gives the same throughput at 32 clients and a lower single-text
    # latency, since requests still merge while the model is busy.
    max_wait_ms: float = Field(0.0, validation_alias=_alias("KASHF_MAX_WAIT_MS"))


class VisionServiceSettings(InferenceSettings):
    model_config = SettingsConfigDict(env_prefix="KASHF_VISION_", extra="ignore", populate_by_name=True)

    decode_workers: int = Field(2, validation_alias=_alias("KASHF_DECODE_WORKERS"))
    max_image_pixels: int = Field(40_000_000, validation_alias=_alias("KASHF_MAX_IMAGE_PIXELS"))


class VideoServiceSettings(InferenceSettings):
    model_config = SettingsConfigDict(env_prefix="KASHF_VIDEO_", extra="ignore", populate_by_name=True)

    max_video_seconds: float = Field(600.0, validation_alias=_alias("KASHF_MAX_VIDEO_SECONDS"))
    max_video_frames: int = Field(2000, validation_alias=_alias("KASHF_MAX_VIDEO_FRAMES"))
    sync_video_seconds: float = Field(120.0, validation_alias=_alias("KASHF_SYNC_VIDEO_SECONDS"))
    # Bus slots: requests beyond active_videos wait for a slot instead of failing with 429.
    concurrency: int = Field(8, validation_alias=_alias("KASHF_CONCURRENCY"))
    active_videos: int = Field(2, validation_alias=_alias("KASHF_VIDEO_ACTIVE_VIDEOS"))
    frame_batch: int = Field(16, validation_alias=_alias("KASHF_VIDEO_FRAME_BATCH"))
    job_workers: int = Field(1, validation_alias=_alias("KASHF_VIDEO_JOB_WORKERS"))
    job_ack_wait_s: float = Field(60.0, validation_alias=_alias("KASHF_VIDEO_JOB_ACK_WAIT_S"))
    job_max_deliver: int = Field(3, validation_alias=_alias("KASHF_VIDEO_JOB_MAX_DELIVER"))
    tmp_dir: Path | None = Field(None, validation_alias=_alias("KASHF_VIDEO_TMP_DIR"))


class TrainerSettings(DatabaseSettings):
    model_config = SettingsConfigDict(env_prefix="KASHF_TRAINER_", extra="ignore", populate_by_name=True)

    debounce_s: float = Field(3.0, validation_alias=_alias("KASHF_TRAIN_DEBOUNCE_S"))
    max_deliver: int = Field(5, validation_alias=_alias("KASHF_TRAIN_MAX_DELIVER"))
    # The heartbeat (every ack_wait/3) keeps a long refit's events; a crashed trainer's come back this soon.
    ack_wait_s: float = Field(15.0, validation_alias=_alias("KASHF_TRAIN_ACK_WAIT_S"))
    cv_folds: int = Field(5, validation_alias=_alias("KASHF_CV_FOLDS"))
    # Self-training on the kept inputs (trainer.selftraining); off: the pool never joins a fit.
    self_training: bool = Field(True, validation_alias=_alias("KASHF_SELF_TRAINING"))
    stall_s: float = Field(120.0, validation_alias=_alias("KASHF_TRAIN_STALL_S"))
    # Head versions kept per dataset besides the live one (modelkit.heads.prune_heads); older blobs are deleted.
    head_versions_kept: int = Field(3, ge=0, validation_alias=_alias("KASHF_HEAD_VERSIONS_KEPT"))
    # Promotion gate: a fit whose cross-validated macro-F1 is more than this many F1 points (percent) below the
    # live version's is stored held, not made live (trainer.service.promotion_gate); train with force to promote.
    promotion_tolerance: float = Field(2.0, ge=0, validation_alias=_alias("KASHF_PROMOTION_TOLERANCE"))
    # suggest_labels (trainer.suggestions.SuggestConfig): no two suggestions of a dataset above this cosine;
    # how many are kept per dataset; the contradiction (oof probability of the other label) that makes a
    # report suspect; pool items embedded after one fit at most.
    suggest_max_cosine: float = Field(0.95, gt=0, le=1, validation_alias=_alias("KASHF_SUGGEST_MAX_COSINE"))
    suggest_limit: int = Field(200, ge=0, le=10_000, validation_alias=_alias("KASHF_SUGGEST_LIMIT"))
    suggest_suspect_min: float = Field(0.75, ge=0.5, le=1, validation_alias=_alias("KASHF_SUGGEST_SUSPECT_MIN"))
    suggest_embed_per_refit: int = Field(2000, ge=0, validation_alias=_alias("KASHF_SUGGEST_EMBED_PER_REFIT"))
    # Webhook deliveries: POSTed under the image fetch rules (FETCH_ALLOW_HOSTS / FETCH_ALLOW_PORTS), retried
    # after retry_delay_s doubling up to retry_max_delay_s, for retry_for_s after the event; then failed.
    fetch_allow_hosts: str = Field("", validation_alias=_alias("FETCH_ALLOW_HOSTS"))
    fetch_allow_ports: str = Field("80,443", validation_alias=_alias("FETCH_ALLOW_PORTS"))
    webhook_retry_for_s: float = Field(86_400.0, gt=0, validation_alias=_alias("KASHF_WEBHOOK_RETRY_FOR_S"))
    webhook_retry_delay_s: float = Field(10.0, gt=0, validation_alias=_alias("KASHF_WEBHOOK_RETRY_DELAY_S"))
    webhook_retry_max_delay_s: float = Field(3600.0, gt=0, validation_alias=_alias("KASHF_WEBHOOK_RETRY_MAX_DELAY_S"))
    webhook_timeout_s: float = Field(10.0, gt=0, validation_alias=_alias("KASHF_WEBHOOK_TIMEOUT_S"))
    # Deliveries sent at once; each holds a database connection of its own pool while it is sent.
    webhook_concurrency: int = Field(4, ge=1, validation_alias=_alias("KASHF_WEBHOOK_CONCURRENCY"))
    # Pending deliveries whose message may have been lost are published again after this long past due.
    webhook_sweep_s: float = Field(60.0, gt=0, validation_alias=_alias("KASHF_WEBHOOK_SWEEP_S"))

    @field_validator("fetch_allow_ports")
    @classmethod
    def _ports(cls, value: str) -> str:
        return InferenceSettings._ports(value)
