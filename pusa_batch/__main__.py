"""`python -m pusa_batch ...` is `pusa-batch ...`."""

import sys

from pusa_batch.cli.main import main

sys.exit(main())
