"""scripts/setup_env.sh's checks that run before it installs anything."""

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("extras", ["dev;rm -rf /", "dev,,ros", "../x", "dev,ros]"])
def test_extras_must_be_a_comma_separated_list_of_names(extras, tmp_path):
    venv = tmp_path / "venv"
    done = subprocess.run(["bash", str(ROOT / "scripts" / "setup_env.sh"), extras], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "FASTDP_VENV": str(venv)}, timeout=60)
    assert done.returncode == 2
    assert "comma-separated list of names" in done.stderr
    assert not venv.exists()  # refused before creating anything
