"""Every stream, KV and object store Kashf declares gets KASHF_JETSTREAM_REPLICAS copies, existing ones too;
on a real three-server JetStream cluster a stored head survives losing the server that led its bucket."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
from nats.js import JetStreamContext

from devtools.servers import NatsCluster, until_ok
from modelkit.heads import Head, load_head, store_head
from shared import subjects
from shared.bus import Bus, ensure_streams
from shared.bus.streams import JetStreamSetupError, blobs_config, events_config, heads_config
from shared.bus.video_jobs import VideoJobNames, VideoJobStore
from shared.settings import CommonSettings

KASHF_STREAMS = (subjects.EVENTS_STREAM, f"OBJ_{subjects.HEADS_BUCKET}", f"OBJ_{subjects.BLOBS_BUCKET}")


def _video_names() -> VideoJobNames:
    name = uuid.uuid4().hex[:8]
    return VideoJobNames(stream=f"TEST_JOBS_{name}", subject=f"test.jobs.{name}", bucket=f"test-jobs-{name}")


def _video_streams(names: VideoJobNames) -> tuple[str, str]:
    return names.stream, f"KV_{names.bucket}"


async def _replicas(js: JetStreamContext, stream: str) -> int | None:
    return (await js.stream_info(stream)).config.num_replicas


def test_the_setting_reaches_every_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KASHF_JETSTREAM_REPLICAS", "3")
    replicas = CommonSettings().jetstream_replicas
    assert replicas == 3
    assert events_config(replicas).num_replicas == 3
    assert heads_config(replicas).replicas == 3 and heads_config(replicas).bucket == subjects.HEADS_BUCKET
    blobs = blobs_config(replicas)
    assert blobs.replicas == 3 and blobs.ttl == subjects.BLOBS_TTL_S  # the uploads' expiry is kept
    monkeypatch.setenv("KASHF_JETSTREAM_REPLICAS", "0")
    with pytest.raises(ValueError, match="KASHF_JETSTREAM_REPLICAS"):
        CommonSettings()


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    bus = await Bus.connect(nats_url, "test-replicas")
    yield bus
    await bus.close(1)


async def test_one_server_keeps_one_copy_and_refuses_three_by_name(bus: Bus) -> None:
    await ensure_streams(bus.js, replicas=1)
    names = _video_names()
    await VideoJobStore(bus.js, names, replicas=1).ensure()
    for stream in (*KASHF_STREAMS, *_video_streams(names)):
        assert await _replicas(bus.js, stream) == 1, stream
    # Three are what is asked for: a lone server refuses, and the error says which setting to change.
    with pytest.raises(JetStreamSetupError, match=r"KASHF_EVENTS with replicas=3 .*non-clustered"):
        await ensure_streams(bus.js, replicas=3)
    with pytest.raises(JetStreamSetupError, match=r"replicas=3 \(KASHF_JETSTREAM_REPLICAS\)"):
        await VideoJobStore(bus.js, _video_names(), replicas=3).ensure()
    assert await _replicas(bus.js, subjects.EVENTS_STREAM) == 1  # nothing half-changed


# A real JetStream cluster: three nats-servers on loopback, routed to each other.


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    cluster = NatsCluster(tmp_path)
    cluster.start()
    yield cluster
    cluster.stop()



def _head(version: int) -> Head:
    return Head(model_id="m", version=version, tag_ids=np.array([7], dtype=np.int64),
                weights=np.ones((1, 3), dtype=np.float32), bias=np.zeros(1, dtype=np.float32),
                calibration=np.array([[1.0, 0.0]], dtype=np.float32), thresholds=np.array([0.5], dtype=np.float32))


async def test_three_copies_on_a_cluster_survive_losing_the_leader(cluster: NatsCluster) -> None:
    bus = await Bus.connect(cluster.url("n0"), "test-cluster")
    await until_ok(lambda: ensure_streams(bus.js))  # as an older release left them: one copy
    names = _video_names()
    await VideoJobStore(bus.js, names).ensure()
    await store_head(bus.js, 41, _head(1))
    for stream in (*KASHF_STREAMS, *_video_streams(names)):
        assert await _replicas(bus.js, stream) == 1

    await ensure_streams(bus.js, replicas=3)  # existing ones are scaled in place, their data kept
    await VideoJobStore(bus.js, names, replicas=3).ensure()
    await ensure_streams(bus.js)  # a process without the setting leaves the copies alone
    await VideoJobStore(bus.js, names).ensure()
    heads_stream = f"OBJ_{subjects.HEADS_BUCKET}"
    for stream in (*KASHF_STREAMS, *_video_streams(names)):
        assert await _replicas(bus.js, stream) == 3, stream
        await until_ok(lambda stream=stream: _two_followers(bus.js, stream))
    await store_head(bus.js, 42, _head(5))
    await bus.close(1)

    leader = await until_ok(lambda: _leader(cluster.url("n0"), heads_stream))
    survivor = next(node for node in cluster.procs if node != leader)
    cluster.kill(leader)
    survivor_bus = await Bus.connect(cluster.url(survivor), "test-cluster-survivor")
    head = await until_ok(lambda: load_head(survivor_bus.js, 42, 5))
    assert head.version == 5 and head.tag_ids.tolist() == [7]
    older = await until_ok(lambda: load_head(survivor_bus.js, 41, 1))  # stored before the scale-up
    assert older.version == 1
    await survivor_bus.close(1)


async def _two_followers(js: JetStreamContext, stream: str) -> None:
    """The stream's copies are in place: a leader and two followers that have caught up with it."""
    info = await js.stream_info(stream)
    assert info.cluster is not None and info.cluster.leader, stream
    followers = info.cluster.replicas or []
    assert len(followers) == 2 and all(peer.current for peer in followers), (stream, followers)


async def _leader(url: str, stream: str) -> str:
    bus = await Bus.connect(url, "test-cluster-info")
    try:
        info = await bus.js.stream_info(stream)
    finally:
        await bus.close(1)
    assert info.cluster is not None and info.cluster.leader
    return info.cluster.leader
