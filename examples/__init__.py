"""Examples built on offload: an sqlite3 driver and a Tornado app that uses it."""
