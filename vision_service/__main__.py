"""``python -m vision_service``."""

from vision_service.main import main

raise SystemExit(main())
