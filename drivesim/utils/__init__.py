"""Small shared helpers (atomic file output, errors). Imports nothing else from drivesim."""
