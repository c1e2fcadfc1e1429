"""VQGAN tokenizer: frames <-> discrete tokens."""

__version__ = "0.1.0"
