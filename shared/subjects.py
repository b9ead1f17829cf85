"""Every NATS subject, stream and bucket Kashf uses, with the timeout of each request."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Subject:
    """A request/reply subject and how long a requester waits for the answer."""

    name: str
    timeout_s: float
    queue: str


TEXT_EMBED = Subject("kashf.text.embed.v1", 30.0, "text_service")
TEXT_TAG = Subject("kashf.text.tag.v1", 30.0, "text_service")
VISION_EMBED = Subject("kashf.vision.embed.v1", 60.0, "vision_service")
VISION_TAG = Subject("kashf.vision.tag.v1", 60.0, "vision_service")
VIDEO_TAG = Subject("kashf.video.tag.v1", 180.0, "video_service")
# Which embedding model a service runs ({model_id, dim}); the trainer asks before each refit.
TEXT_MODEL_INFO = Subject("kashf.models.text.info.v1", 5.0, "text_service")
IMAGE_MODEL_INFO = Subject("kashf.models.image.info.v1", 5.0, "vision_service")
# A dataset's tagger as a zip (modelkit.export): built by the model service, handed over in the blobs bucket.
TEXT_EXPORT = Subject("kashf.text.export.v1", 300.0, "text_service")
VISION_EXPORT = Subject("kashf.vision.export.v1", 300.0, "vision_service")

# JetStream: durable events. Subjects carry the dataset id so a consumer could filter.
EVENTS_STREAM = "KASHF_EVENTS"
EVENTS_SUBJECTS = ["kashf.events.>"]
REPORT_EVENT = "kashf.events.report"  # + ".<dataset_id>"
TRAIN_EVENT = "kashf.events.train"  # + ".<dataset_id>"
TRAINER_DURABLE = "trainer"

# JetStream work queue of asynchronous video jobs (gateway -> video_service) and the KV bucket of their
# records (shared.bus.video_jobs); both keep a job a day.
VIDEO_JOBS_STREAM = "KASHF_VIDEO_JOBS"
VIDEO_JOBS_SUBJECT = "kashf.jobs.video"
VIDEO_JOBS_BUCKET = "kashf-video-jobs"
VIDEO_JOBS_DURABLE = "video_service"
VIDEO_JOBS_TTL_S = 24 * 3600.0
# A job message is small (refs, not bytes); the cap bounds what a flood of jobs can hold on disk.
VIDEO_JOBS_MAX_MSGS = 100_000

# JetStream: webhook deliveries (trainer -> its own delivery worker), one message per delivery row; retried with
# backoff for a day, so the stream keeps a message at most a little longer.
WEBHOOKS_STREAM = "KASHF_WEBHOOKS"
WEBHOOKS_SUBJECT = "kashf.webhooks.deliver"
WEBHOOKS_DURABLE = "webhooks"
WEBHOOKS_MAX_AGE_S = 2 * 24 * 3600.0

# Core NATS broadcast (every listener, no queue group, best effort): these datasets' tags, kind or head
# changed, so gateways drop what they cached of them.
DATASETS_CHANGED = "kashf.datasets.changed.v1"

# JetStream KV: the per-account rate limit shared by every gateway replica (gateway.infra.sharedrate): one key
# per account, its bucket's tokens and when they were counted. Kept in memory; a key idle this long is
# dropped, which leaves a full bucket (it would have refilled long before).
RATE_BUCKET = "kashf-rate"
RATE_KEY_TTL_S = 3600.0

# Object stores: fitted heads (per dataset) and large payloads (uploads, videos).
HEADS_BUCKET = "kashf-heads"
BLOBS_BUCKET = "kashf-blobs"
BLOBS_TTL_S = 3600.0


def report_subject(dataset_id: int) -> str:
    return f"{REPORT_EVENT}.{dataset_id}"


def train_subject(dataset_id: int) -> str:
    return f"{TRAIN_EVENT}.{dataset_id}"
