"""mixer: exact, verifiable data mixes for specialized-pretraining studies."""

__version__ = "0.1.0"
