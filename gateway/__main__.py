"""`python -m gateway`: the same as the `gateway` console script.

Must not: do anything but call `cli.main`.
"""

import sys

from gateway.cli import main

sys.exit(main())
