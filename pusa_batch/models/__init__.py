"""Pusa model families: real architectures, real loaders, tiny twins."""
