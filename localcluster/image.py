"""placeholder"""

from pathlib import Path


def ensure_product_image() -> Path:
    raise NotImplementedError
