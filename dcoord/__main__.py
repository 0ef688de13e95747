import sys

from dcoord.cli import main

sys.exit(main())
