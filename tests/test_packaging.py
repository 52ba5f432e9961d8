"""What `pip install tierflow` puts on a machine: one top-level name, and a working console script."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_installs_only_the_tierflow_namespace(tmp_path):
    # Build from a copy: setuptools leaves a build/ folder in the tree it builds.
    source = tmp_path / "src"
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    for name in tracked.stdout.split():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(source),
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
    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True)
    offenders = [name for name in tracked.stdout.split() if name != "tests/test_packaging.py"
                 and "sys.path" in (ROOT / name).read_text()]
    assert offenders == []
