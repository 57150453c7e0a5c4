import sys

from dooly.cli import main

sys.exit(main())
