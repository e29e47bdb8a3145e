"""`python -m makd` runs the command line (makd.cli)."""
import sys

from makd.cli import main

sys.exit(main())
