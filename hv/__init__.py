"""hv (placeholder until its issue lands)."""
