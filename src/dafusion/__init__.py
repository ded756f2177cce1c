"""DA-Fusion: few-shot data augmentation with text-to-image diffusion models.

The release number lives in the VERSION file beside this one, not here: every job's code
fingerprint covers this module (`dafusion.provenance`), and a release alone changes no
result, so it must rerun no job.
"""

from pathlib import Path

__version__ = Path(__file__).with_name("VERSION").read_text(encoding="utf-8").strip()
