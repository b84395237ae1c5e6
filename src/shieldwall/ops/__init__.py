"""Running shieldwall in production: metrics for a scraper (and, to come, the daemon,
events and automatic mitigation)."""
