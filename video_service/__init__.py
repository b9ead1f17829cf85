"""Video tagging service: samples frames from a video (``sampling``) and tags them with a dataset's head.

Design decision: frames are embedded by an ImageEncoder inside this process, shared by all requests
behind one dynamic batcher, rather than sent to vision_service: a frame never crosses the bus (a
decoded 224x224 frame is ~600 KB of float32, an upload would be a blob-store round trip per frame),
there is no extra NATS hop per frame, and decoding overlaps the model call on the same machine. The
cost is a second copy of the image model in memory (~20 MB for EfficientNet-Lite0). Both services
read the same KASHF_IMAGE_MODEL, so the heads fitted on vision_service's embeddings apply here.

Synchronous requests (VIDEO_TAG) analyse at most KASHF_SYNC_VIDEO_SECONDS of video; longer ones go
through the KASHF_VIDEO_JOBS work queue (``jobs``) and their state and result live in the
kashf-video-jobs KV bucket for a day.
"""
