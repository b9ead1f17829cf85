"""``python -m video_service``."""

from video_service.main import main

raise SystemExit(main())
