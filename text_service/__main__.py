"""``python -m text_service``."""

from text_service.main import main

raise SystemExit(main())
