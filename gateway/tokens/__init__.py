"""Access tokens and keys: signing, verifying, the key ring, refresh-token digests. Must not: import aiohttp or the store."""
