"""Video IO, dataset adapters, synthetic worlds and token caches."""

# section: io-datasets exports (helper A replaces this line)
# section: synthetic-cache exports (helper B replaces this line)

__version__ = "0.1.0"
