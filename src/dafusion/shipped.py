"""Files that come with the package: the tiny-digits miniature and the reference digit
classifier. Paths only, no torch: the workflow reads them while it builds its DAG."""

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
MINIATURE = ASSETS / "tiny-digits"
REFERENCE_CLASSIFIER = ASSETS / "reference-digits.safetensors"
MINIATURE_RESOLUTION = 16  # the size tiny-digits was trained at (dafusion.miniature)
