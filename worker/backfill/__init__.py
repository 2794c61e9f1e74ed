"""``dunning backfill``: the provider's billing history from before we were installed."""
