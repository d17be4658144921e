"""pager (placeholder until its issue lands)."""
