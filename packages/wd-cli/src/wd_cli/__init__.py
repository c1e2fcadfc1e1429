"""The WorldDreamer pipeline and the wd command."""

__version__ = "0.1.0"
