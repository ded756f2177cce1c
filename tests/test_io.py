import os

import pytest
import torch
from safetensors.torch import save_file

from dafusion.io import atomic_path


def test_outputs_get_the_usual_permissions(tmp_path):
    """safetensors writes 0600; results must be readable as the umask allows (shared clusters)."""
    mask = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "t.safetensors") as tmp:
            save_file({"x": torch.zeros(1)}, str(tmp))
    finally:
        os.umask(mask)
    assert (tmp_path / "t.safetensors").stat().st_mode & 0o777 == 0o644


def test_a_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "out.parquet") as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
