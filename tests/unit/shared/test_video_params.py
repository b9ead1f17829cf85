"""The video sampling rules, written once for the gateway and video_service."""

from __future__ import annotations

import pytest

from shared.errors import BadRequest
from shared.schemas.inference import HeadRef
from shared.schemas.media import MediaInput, TagVideoRequest, check_video_params


@pytest.mark.parametrize(("every_ms", "duration", "diff", "code"), [
    (0, None, 0, "bad_every_ms"), (-100, None, 0, "bad_every_ms"), (100, -1, 0, "bad_duration"),
    (100, None, -0.5, "bad_min_frame_diff"), (100, None, 255.5, "bad_min_frame_diff"),
])
def test_bad_params_are_400_with_their_code(every_ms: int, duration: float | None, diff: float, code: str) -> None:
    with pytest.raises(BadRequest) as err:
        check_video_params(every_ms, duration, diff)
    assert err.value.status == 400 and err.value.error_code == code
    request = TagVideoRequest(head=HeadRef(dataset_id=1, version=1), tags=[], video=MediaInput(url="u"),
                              every_ms=every_ms, duration_s=duration, min_frame_diff=diff)
    with pytest.raises(BadRequest):
        request.check()

