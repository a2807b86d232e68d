"""The documented install resolves no CUDA on a CPU machine: pip's plan (a dry run with a report,
nothing installed) for requirements-torch-cpu.txt, as scripts/setup_env.sh installs it without
an NVIDIA GPU, and for `pip install -e .[dev,ros]`, what scripts/test.sh installs after it (the
README's `pip install -e .` plus extras)."""

import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _pypi_reachable() -> bool:
    try:
        urllib.request.urlopen("https://pypi.org/simple/pip/", timeout=10)
        return True
    except OSError:
        return False


def _cpu_index_reachable() -> bool:
    try:
        urllib.request.urlopen("https://download.pytorch.org/whl/cpu/torch/", timeout=10)
        return True
    except OSError:
        return False


def plan(*requirements: str, tmp_path: Path) -> list[dict]:
    """pip's resolution of `requirements` for an empty environment: [{name, version, url}]."""
    report = tmp_path / "report.json"
    # an unreachable index costs pip five retries per project; the plan is the same without them
    retries = [] if _cpu_index_reachable() else ["--retries", "0"]
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                           "--disable-pip-version-check", *retries, "--report", str(report), *requirements],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return [{"name": item["metadata"]["name"].lower(), "version": item["metadata"]["version"],
             "url": item["download_info"]["url"]} for item in json.loads(report.read_text())["install"]]


def cuda_packages(items: list[dict]) -> list[str]:
    """nvidia-* / cuda-* wheels and torch builds that are not the CPU one."""
    bad = [f"{i['name']} {i['version']}" for i in items if re.match(r"(nvidia|cuda)[-_]", i["name"])
           or i["name"] in ("triton",)]
    bad += [f"torch {i['version']}" for i in items
            if i["name"] == "torch" and sys.platform == "linux" and not i["version"].endswith("+cpu")]
    return bad


pytestmark = pytest.mark.skipif(not _pypi_reachable(), reason="PyPI is not reachable: no resolver plan to check")


def test_cuda_packages_are_recognized():
    assert cuda_packages([{"name": "nvidia-cublas", "version": "13.1"}, {"name": "cuda-toolkit", "version": "13"},
                          {"name": "torch", "version": "2.14.1"}, {"name": "numpy", "version": "2.4"},
                          {"name": "torch", "version": "2.13.0+cpu"}]) == (
        ["nvidia-cublas 13.1", "cuda-toolkit 13", "torch 2.14.1"] if sys.platform == "linux" else
        ["nvidia-cublas 13.1", "cuda-toolkit 13"])


def test_the_cpu_torch_requirement_resolves_no_cuda(tmp_path):
    items = plan("-r", "requirements-torch-cpu.txt", tmp_path=tmp_path)
    assert any(i["name"] == "torch" for i in items)
    assert cuda_packages(items) == []


def test_installing_the_package_brings_no_torch_and_no_cuda(tmp_path):
    items = plan("-e", ".[dev,ros]", tmp_path=tmp_path)
    names = {i["name"] for i in items}
    assert "fastdp_ros" in names or "fastdp-ros" in names
    assert "torch" not in names, "torch in install_requires: PyPI's Linux torch is the CUDA build"
    assert cuda_packages(items) == []
