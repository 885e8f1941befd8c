"""medsearch's version, in a module that imports nothing: every other module may read it without a cycle."""

__version__ = "0.1.0"
