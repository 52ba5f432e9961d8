"""tierflow: placement."""
