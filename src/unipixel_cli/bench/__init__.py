"""Benchmarks: engine speed (`bench speed`) and the authors' table (`bench NAME`, see base.py).

Importing this package registers every benchmark module below in `REGISTRY`.
"""

from . import revos, video  # noqa: F401  (registration)
from .base import REGISTRY

__all__ = ["REGISTRY"]
