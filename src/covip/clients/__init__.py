"""One client layer for every model call: capabilities, backends, the registry and the cache."""
