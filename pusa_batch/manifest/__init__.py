"""Manifests: reading and checking rows into `Item`s, writing, building from folders."""
