"""dunning-worker."""
