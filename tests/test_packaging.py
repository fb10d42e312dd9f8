"""Static checks of the container/conda files, and an offline docs build."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _scripts() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def test_dockerfile_copies_existing_paths_and_runs_the_cli():
    text = (ROOT / "Dockerfile").read_text()
    assert text.splitlines()[0].startswith("#") and "FROM " in text
    for line in text.splitlines():
        m = re.match(r"COPY\s+(.+)\s+(\S+)$", line)
        if m:
            for src in m.group(1).split():
                assert (ROOT / src).exists(), f"Dockerfile copies missing path {src}"
    entry = re.search(r'ENTRYPOINT \["([^"]+)"\]', text).group(1)
    assert entry in _scripts()
    assert "ARG CUDA=cpu" in text and "torch==2.14.1" in text


def test_compose_builds_from_the_dockerfile_and_starts_ray():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    head, worker = compose["services"]["ray-head"], compose["services"]["ray-worker"]
    assert (ROOT / head["build"]["context"] / head["build"]["dockerfile"]).is_file()
    assert "--head" in head["command"] and any("ray-head:6379" in c for c in worker["command"])
    assert worker["image"] == head["image"]


def test_conda_environment_installs_this_package():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    editable = next(p for p in pip if p.startswith("-e "))
    assert (ROOT / editable.split()[1].split("[")[0] / "pyproject.toml").is_file()
    assert "torch==2.14.1" in pip


def test_docs_site_builds_offline(tmp_path):
    pytest.importorskip("mkdocs")
    cfg = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    pages = [next(iter(p.values())) for p in cfg["nav"]]
    for page in pages:
        assert (ROOT / "docs" / page).is_file(), page
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for page in pages:
        assert (tmp_path / "site" / page.replace(".md", "") / "index.html").exists() or page == "index.md"
    assert (tmp_path / "site" / "index.html").is_file()


def test_no_merge_conflict_markers_are_committed():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=False).stdout
    if not tracked:
        pytest.skip("not a git checkout")
    bad = []
    for name in tracked.splitlines():
        path = ROOT / name
        if path.suffix in {".py", ".md", ".yml", ".yaml", ".toml", ".cfg", ".txt"} or path.name in {"Makefile", "Dockerfile"}:
            for no, line in enumerate(path.read_text(errors="ignore").splitlines(), 1):
                if line.startswith(("<<<<<<< ", ">>>>>>> ")) or line == "=======":
                    bad.append(f"{name}:{no}")
    assert not bad, f"conflict markers left in {bad}"
