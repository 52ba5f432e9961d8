"""tierflow: tiers."""
