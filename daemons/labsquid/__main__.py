import sys

from labsquid.cli import main

sys.exit(main())
