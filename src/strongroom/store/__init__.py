"""Store layer: a strongly consistent key/value store of opaque (encrypted) records."""
