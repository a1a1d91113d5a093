"""`python -m pusa_batch.cli`, kept for scripts written against the flat layout."""

import sys

from pusa_batch.cli.main import main

sys.exit(main())
