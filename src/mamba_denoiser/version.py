"""The package version, in a module of its own so that anything can read it without
importing the package's __init__ (which would make an import cycle with api.py)."""

__version__ = "0.1.0"
