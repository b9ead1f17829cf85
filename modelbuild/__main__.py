import sys

from modelbuild.cli import main

sys.exit(main())
