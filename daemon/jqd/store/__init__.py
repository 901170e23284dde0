"""Persistence. `Store` (store/api.py) is the narrow interface the daemon uses; SQLite is
the embedded backend. Errors a caller must handle are defined in store/errors.py."""
