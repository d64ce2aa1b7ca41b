"""The gateway's own HTTP/1.1 upstream client: `wire.py` runs one exchange, `pool.py` keeps the connections."""
