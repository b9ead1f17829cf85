"""Tagging: tag_texts (JSON), tag_images and tag_video_frames (JSON URLs or multipart uploads)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from gateway.deps import AccountDep, StateDep, app_state
from gateway.routes.common import api_router, parse_body, post, render
from gateway.routes.guard import media_kind
from gateway.routes.uploads import body_doc, delete_uploads, form_fields, read_form, upload
from gateway.schemas import (
    ImageTagsOut,
    MediaItem,
    TagImagesBody,
    TagImagesForm,
    TagTextsBody,
    TagVideoBody,
    TextTagsOut,
    VideoParams,
    VideoTagsOut,
)
from gateway.service import tagging, video_jobs, videos
from shared.schemas.media import MediaInput

# The form fields of uploads besides the files (for the body's OpenAPI and its parsing).
_IMAGE_FIELDS = ("dataset", "top_k", "min_probability")
_VIDEO_FIELDS = ("dataset", "every_ms", "duration", "min_frame_diff", "async", "top_k", "min_probability")


async def tag_texts(body: TagTextsBody, account: AccountDep, request: Request) -> Response:
    # The hottest route (bench/text.py): no unit of work (a cache miss opens its own), the state off the
    # request rather than by a dependency (about 13 µs each), JSON rendered directly.
    return render(await tagging.tag_texts(app_state(request), account, body))


async def tag_images(request: Request, account: AccountDep, state: StateDep) -> Response:
    if media_kind(request.headers.get("content-type")) == "json":
        body = parse_body(TagImagesBody, await request.body())
        urls = [MediaItem(url, MediaInput(url=url)) for url in body.image_urls]
        return render(await tagging.tag_images(state, account, body.dataset, urls, body))
    form = await read_form(request, state.settings)
    try:
        # Form values are strings ("3"): parsed leniently, where JSON bodies are strict.
        fields = parse_body(TagImagesForm, form_fields(form, _IMAGE_FIELDS), strict=False)
        uploads = await upload(state, form, "image_file", state.settings.max_image_bytes, "KASHF_MAX_IMAGE_BYTES")
    finally:
        await form.close()
    try:
        return render(await tagging.tag_images(state, account, fields.dataset, uploads, fields))
    finally:
        await delete_uploads(state, uploads)


async def tag_video_frames(request: Request, account: AccountDep, state: StateDep) -> Response:
    if media_kind(request.headers.get("content-type")) == "json":
        body = parse_body(TagVideoBody, await request.body())
        videos.check_video_params(body)
        urls = [MediaItem(url, MediaInput(url=url)) for url in body.video_urls]
        if body.async_:
            return render(await video_jobs.submit_videos(state, account, body, urls))
        return render(await videos.tag_videos(state, account, body, urls))
    form = await read_form(request, state.settings)
    try:
        # Form values are strings ("true", "25"): parsed leniently, where JSON bodies are strict.
        params = parse_body(VideoParams, form_fields(form, _VIDEO_FIELDS), strict=False)
        videos.check_video_params(params)  # before anything is uploaded
        uploads = await upload(state, form, "video_file", state.settings.max_video_bytes, "KASHF_MAX_VIDEO_BYTES")
    finally:
        await form.close()
    if params.async_:
        # The job owns the uploads now: video_service deletes them when the job ends.
        return render(await video_jobs.submit_videos(state, account, params, uploads))
    try:
        return render(await videos.tag_videos(state, account, params, uploads))
    finally:
        await delete_uploads(state, uploads)


def router() -> APIRouter:
    r = api_router()
    post(r, "/api/tag_texts", tag_texts, list[TextTagsOut], "Tag texts with the dataset's active tags")
    post(r, "/api/tag_images", tag_images, list[ImageTagsOut],
         "Tag images by URL (JSON) or upload (multipart image_file parts)",
         openapi_extra=body_doc(TagImagesBody, "image_file", _IMAGE_FIELDS))
    post(r, "/api/tag_video_frames", tag_video_frames, list[VideoTagsOut],
         "Tag sampled video frames by URL (JSON) or upload (multipart video_file parts)",
         openapi_extra=body_doc(TagVideoBody, "video_file", _VIDEO_FIELDS))
    return r
