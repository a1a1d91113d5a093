"""pusa-batch: batch, resumable video generation with Pusa's frame-level timesteps."""

__version__ = "0.1.0"
