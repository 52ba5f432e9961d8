"""What `pip install tierflow` puts on a machine: one top-level name, and a working console script."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_installs_only_the_tierflow_namespace(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(ROOT),
                    "-w", str(tmp_path)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("tierflow-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    (dist_info,) = top - {"tierflow"}
    assert dist_info.endswith(".dist-info")
    for package in ("orchestrator", "tiers", "placement", "migration"):
        assert f"tierflow/{package}/__init__.py" in names
    entry_points = zipfile.ZipFile(wheel).read(f"{dist_info}/entry_points.txt").decode()
    assert "tierflow = tierflow.orchestrator.cli:main" in entry_points


def test_no_source_edits_sys_path():
    offenders = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py")
                 if ".venv" not in p.parts and "sys.path" in p.read_text() and p.name != "test_packaging.py"]
    assert offenders == []
