"""aiotusd: a tus 1.0.0 resumable-upload server on aiohttp."""

__version__ = "0.1.0"
