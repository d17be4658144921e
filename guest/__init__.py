"""guest (placeholder until its issue lands)."""
