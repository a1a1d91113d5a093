"""The output root, the only state of a run: commits, the index, the lease, fsspec I/O."""
