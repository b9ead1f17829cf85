"""What each Kashf process may publish and subscribe to on NATS, and the nats-server config that enforces it.
One user per service; replies by ``allow_responses`` (progress beats, then the reply); inboxes under
``_INBOX.<service>.`` (``shared.bus.connect``), so no user reads another's replies or calls what it should not."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

from shared import subjects

SERVICES = ("gateway", "text_service", "vision_service", "video_service", "trainer")
_API = "$JS.API"


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def inbox_prefix(service: str) -> str:
    """Where ``service``'s replies and JetStream deliveries arrive; only that user may subscribe there."""
    return f"_INBOX.{service}"


def _streams_declared(*streams: str) -> list[str]:
    # Every process declares what it uses at start (idempotent); it may create or update those, never delete.
    return [f"{_API}.STREAM.{op}.{s}" for s in streams for op in ("CREATE", "UPDATE", "INFO")]


def _read_stream(stream: str) -> list[str]:
    """Read messages of ``stream`` by sequence or subject, and through a consumer of its own."""
    return [
        f"{_API}.STREAM.MSG.GET.{stream}", f"{_API}.DIRECT.GET.{stream}", f"{_API}.DIRECT.GET.{stream}.>",
        f"{_API}.CONSUMER.CREATE.{stream}", f"{_API}.CONSUMER.CREATE.{stream}.>",
        f"{_API}.CONSUMER.DELETE.{stream}.>", f"{_API}.CONSUMER.INFO.{stream}.>",
    ]


def _objects(bucket: str, *, write: bool) -> list[str]:
    stream = f"OBJ_{bucket}"
    allowed = [*_streams_declared(stream), *_read_stream(stream), f"$JS.FC.{stream}.>"]
    if write:  # put and delete: chunks and metadata, then purge of the replaced chunks
        allowed += [f"$O.{bucket}.>", f"{_API}.STREAM.PURGE.{stream}"]
    return allowed


def _pull(stream: str, durable: str) -> list[str]:
    """Bind a durable pull consumer, fetch, and acknowledge (ack, nak, term, progress)."""
    return [
        f"{_API}.CONSUMER.DURABLE.CREATE.{stream}.{durable}", f"{_API}.CONSUMER.CREATE.{stream}.{durable}",
        f"{_API}.CONSUMER.CREATE.{stream}.{durable}.>", f"{_API}.CONSUMER.INFO.{stream}.{durable}",
        f"{_API}.CONSUMER.MSG.NEXT.{stream}.{durable}", f"$JS.ACK.{stream}.{durable}.>",
    ]


def _video_jobs(*, submit: bool) -> list[str]:
    kv = f"KV_{subjects.VIDEO_JOBS_BUCKET}"
    allowed = [*_streams_declared(subjects.VIDEO_JOBS_STREAM, kv), *_read_stream(kv),
               f"$KV.{subjects.VIDEO_JOBS_BUCKET}.>"]
    if submit:
        allowed.append(subjects.VIDEO_JOBS_SUBJECT)
    else:
        allowed += _pull(subjects.VIDEO_JOBS_STREAM, subjects.VIDEO_JOBS_DURABLE)
    return allowed


def _rate_store() -> list[str]:
    """The gateways' shared rate-limit bucket: declare it, read a key (from the stream leader), write a key
    expecting its last revision (``$KV.<bucket>.<key>`` with a header; the answer comes to the inbox)."""
    stream = f"KV_{subjects.RATE_BUCKET}"
    return [*_streams_declared(stream), f"{_API}.STREAM.MSG.GET.{stream}", f"$KV.{subjects.RATE_BUCKET}.>"]


def _common(service: str) -> list[str]:
    return [f"{_API}.INFO", f"{_API}.STREAM.NAMES", *_streams_declared(subjects.EVENTS_STREAM),
            *_objects(subjects.HEADS_BUCKET, write=service == "trainer"),
            # Uploads: the gateway puts them, the trainer puts kept copies to embed, video deletes a job's.
            *_objects(subjects.BLOBS_BUCKET, write=service in ("gateway", "trainer", "video_service",
                                                               # exports: text and vision put the zips
                                                               "text_service", "vision_service"))]


def permissions() -> dict[str, Permissions]:
    """Each service's allow lists (anything not listed is denied)."""
    models = [s.name for s in (subjects.TEXT_EMBED, subjects.TEXT_TAG, subjects.VISION_EMBED, subjects.VISION_TAG,
                               subjects.VIDEO_TAG, subjects.TEXT_MODEL_INFO, subjects.IMAGE_MODEL_INFO,
                               subjects.TEXT_EXPORT, subjects.VISION_EXPORT)]
    serves = {
        "text_service": [subjects.TEXT_EMBED.name, subjects.TEXT_TAG.name, subjects.TEXT_MODEL_INFO.name,
                         subjects.TEXT_EXPORT.name],
        "vision_service": [subjects.VISION_EMBED.name, subjects.VISION_TAG.name, subjects.IMAGE_MODEL_INFO.name,
                           subjects.VISION_EXPORT.name],
        "video_service": [subjects.VIDEO_TAG.name],
    }
    publish = {
        "gateway": [*models, "kashf.events.>", subjects.DATASETS_CHANGED, *_video_jobs(submit=True),
                    *_rate_store()],
        "trainer": [subjects.TEXT_EMBED.name, subjects.VISION_EMBED.name, subjects.TEXT_MODEL_INFO.name,
                    subjects.IMAGE_MODEL_INFO.name, subjects.DATASETS_CHANGED, subjects.TRAIN_EVENT + ".>",
                    *_pull(subjects.EVENTS_STREAM, subjects.TRAINER_DURABLE),
                    # The stall sweeper reads a dataset's last event to compare it with the ack floor.
                    f"{_API}.STREAM.MSG.GET.{subjects.EVENTS_STREAM}",
                    # Webhook deliveries: the trainer queues them and delivers them itself.
                    *_streams_declared(subjects.WEBHOOKS_STREAM), subjects.WEBHOOKS_SUBJECT,
                    *_pull(subjects.WEBHOOKS_STREAM, subjects.WEBHOOKS_DURABLE)],
        "video_service": _video_jobs(submit=False),
    }
    subscribe = {"gateway": [subjects.DATASETS_CHANGED], **serves}
    return {
        service: Permissions(
            publish=tuple(dict.fromkeys([*_common(service), *publish.get(service, [])])),
            subscribe=tuple(dict.fromkeys([f"{inbox_prefix(service)}.>", *subscribe.get(service, [])])),
        )
        for service in SERVICES
    }


def server_urls(url: str) -> list[str]:
    """The servers ``NATS_URL`` names: one URL, or several separated by commas (the seeds of a cluster)."""
    urls = [part.strip() for part in url.split(",") if part.strip()]
    if not urls:
        raise ValueError("NATS_URL names no server")
    return urls


def with_user(url: str, user: str, password: str) -> str:
    """``url`` (each server of a list) with ``user:password@`` in place of any credentials it carries."""
    return ",".join(_one_with_user(one, user, password) for one in server_urls(url))


def _one_with_user(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def server_config(passwords: Mapping[str, str], *, port: int, store_dir: str, host: str = "127.0.0.1") -> str:
    """A nats-server config: JetStream, one user per service with its permissions and password, and an
    ``admin`` user with every permission when ``passwords`` names one (operators, tests)."""
    users: list[dict[str, object]] = [{"user": "admin", "password": passwords["admin"]}] if "admin" in passwords else []
    for service, allowed in permissions().items():
        users.append({
            "user": service,
            "password": passwords[service],
            "permissions": {"publish": {"allow": list(allowed.publish)},
                            "subscribe": {"allow": list(allowed.subscribe)},
                            # A reply, plus the progress beats of a long request (about one a second).
                            "allow_responses": {"max": 1000, "expires": "10m"}},
        })
    # JSON is valid nats-server configuration syntax; "$NAME" passwords become references to the server's
    # environment (a Kubernetes Secret), which the syntax writes unquoted.
    authorization = re.sub(r'"(\$[A-Z][A-Z0-9_]*)"', r"\1", json.dumps({"users": users}, indent=1))
    lines = [f"listen: {json.dumps(f'{host}:{port}')}", f"jetstream: {{store_dir: {json.dumps(store_dir)}}}",
             f"authorization: {authorization}"]
    return "\n".join(lines) + "\n"


def password_variable(user: str) -> str:
    """The environment variable a deployed nats-server reads ``user``'s password from."""
    return f"KASHF_NATS_{user.upper()}_PASSWORD"


def main() -> None:
    """``python -m shared.natsauth``: print the users block for a deployed NATS (deploy/nats/kashf-users.conf)."""
    passwords = {user: "$" + password_variable(user) for user in SERVICES}
    config = server_config(passwords, port=4222, store_dir="/data/jetstream", host="0.0.0.0")
    print("# Kashf's NATS users, one per service (generated by `python -m shared.natsauth`; do not edit).")
    print("# In the server config: `include ./kashf-users.conf`; passwords come from the server's environment.")
    print("authorization: " + config.split("authorization: ", 1)[1], end="")


if __name__ == "__main__":
    main()
