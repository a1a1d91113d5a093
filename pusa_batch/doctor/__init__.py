"""`pusa-batch doctor` and the pre-run checks: a pipeline checked from file headers, no weights."""
