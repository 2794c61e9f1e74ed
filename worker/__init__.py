"""dunning-worker: recovers revenue lost to failed card payments."""
