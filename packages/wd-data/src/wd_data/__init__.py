"""Video IO, dataset adapters, synthetic worlds and token caches."""

__version__ = "0.1.0"
