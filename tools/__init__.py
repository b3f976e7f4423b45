"""Programs that come with vmhealth but are not installed with it (run from a checkout)."""
