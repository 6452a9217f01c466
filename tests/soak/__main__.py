"""``python -m tests.soak`` = ``bin/soak``."""

import sys

from tests.soak.run import main

sys.exit(main())
