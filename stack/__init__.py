"""stack (placeholder until its issue lands)."""
