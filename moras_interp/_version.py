"""The package version (one home: read by the top-level package and by run identities)."""

__version__ = "0.2.0"
