"""Everything the service keeps in its database: jobs, their events and metrics, tokens."""
