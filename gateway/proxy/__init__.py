"""Proxying: the forwarder, the header policy both ways, path normalization, the upstream connections."""
