import sys

from shared.modelbuild.cli import main

sys.exit(main())
