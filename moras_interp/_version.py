"""The package version (one home: read by the top-level package and by run identities)."""

__version__ = "0.1.0"
