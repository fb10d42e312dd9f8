"""A clean start: ``import cl_iad`` and ``cl-iad --help`` print nothing from our dependencies, load
none of the heavy ones, and answer quickly; a run loads only the model file it uses.

Each check runs in a fresh interpreter (a subprocess), because this test process has long since
imported everything and pytest filters warnings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# packages that take a second or more to import, or that an optional extra provides
HEAVY = ("torch", "torchvision", "numpy", "pandas", "anomalib", "timm", "lightning", "avalanche", "matplotlib",
         "scipy", "sklearn", "wandb", "ray", "wandb_workspaces", "yaml")


def _env() -> dict:
    """The caller's environment with this checkout first on the path and Python's default warning filters."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def _python(code: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=timeout, check=False)


def _warning_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "Warning" in line or "warn(" in line]


def test_import_cl_iad_prints_nothing_and_imports_nothing_heavy(tmp_path):
    proc = _python(f"import sys, cl_iad; print([m for m in {HEAVY!r} if m in sys.modules])", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.strip() == "[]", f"import cl_iad loaded {proc.stdout.strip()}"


def test_every_help_page_prints_only_usage_and_imports_nothing_heavy(tmp_path):
    code = (
        "import contextlib, io, sys\n"
        "from cl_iad.cli import build_parser, main\n"
        "pages = [[]] + [[name] for name in build_parser().subcommands]\n"
        "for page in pages:\n"
        "    out = io.StringIO()\n"
        "    with contextlib.redirect_stdout(out):\n"
        "        try:\n"
        "            main([*page, '--help'])\n"
        "        except SystemExit as exc:\n"
        "            assert exc.code == 0, (page, exc.code)\n"
        "    assert out.getvalue().startswith('usage: '), page\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    proc = _python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.strip() == "[]", f"--help loaded {proc.stdout.strip()}: move those imports into functions"


def _best_of(cmd: list[str], cwd: Path, n: int = 3) -> tuple[float, subprocess.CompletedProcess]:
    times, proc = [], None
    for _ in range(n):
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=120, check=False)
        times.append(time.perf_counter() - start)
    return min(times), proc


def test_cl_iad_help_is_quiet_and_quick(tmp_path, record_property):
    script = Path(sys.executable).parent / ("cl-iad.exe" if os.name == "nt" else "cl-iad")
    cmd = [str(script), "--help"] if script.exists() else [sys.executable, "-m", "cl_iad", "--help"]
    seconds, proc = _best_of(cmd, tmp_path)
    baseline, _ = _best_of([sys.executable, "-c", "pass"], tmp_path)
    record_property("cl_iad_help_seconds", round(seconds, 3))
    print(f"cl-iad --help: {seconds:.2f} s (python -c pass: {baseline:.2f} s)")
    assert proc.returncode == 0 and proc.stdout.startswith("usage: cl-iad"), proc.stderr
    assert proc.stderr == ""
    # the target is 2 s; machines shared in CI vary, so this only catches a heavy import at start-up
    # (which costs 3-6 s: torch, pandas); benchmarks/ is where speed is measured
    assert seconds < 5 + baseline, f"cl-iad --help took {seconds:.1f} s (python -c pass {baseline:.2f} s)"


def test_cli_metrics_default_is_the_result_store_s():
    from cl_iad.cli import METRICS
    from cl_iad.results import METRICS as STORED

    assert tuple(METRICS) == tuple(STORED)


def test_library_use_prints_no_warning_from_timm_or_anomalib(tmp_path):
    # building PatchCore imports anomalib's models, which import timm.models.layers: both deprecated
    # paths of theirs, silenced by `import cl_iad` (its filters match those packages only)
    proc = _python("from cl_iad.strategies import build_model\nbuild_model('patchcore')", tmp_path,
                   timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _warning_lines(proc.stderr) == [], proc.stderr[-2000:]


def test_import_filters_hide_only_timm_and_anomalib_deprecations(tmp_path):
    code = ("import warnings, cl_iad\n"
            "warnings.warn('ours', FutureWarning)\n"
            "warnings.warn_explicit('theirs', FutureWarning, 'x.py', 1, module='timm.models.layers')\n")
    proc = _python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "ours" in proc.stderr and "theirs" not in proc.stderr


def _model_modules() -> set[str]:
    """Every module of cl_iad.models that defines a model (the registry's own rule)."""
    import pkgutil

    from cl_iad.models import registry

    return {f"cl_iad.models.{m.name}" for m in pkgutil.iter_modules([str(ROOT / "cl_iad" / "models")])
            if m.name not in registry._NOT_MODELS and not m.name.startswith("_")}


@pytest.mark.slow
def test_cli_run_imports_only_the_model_it_runs_and_prints_no_warning(tmp_path):
    argv = ["run", "--dataset", "synthetic", "--root", str(tmp_path / "data"), "--n-tasks", "2", "--image-size", "64",
            "--n-train", "4", "--n-test-good", "2", "--n-test-per-defect", "1", "--model", "patchcore",
            "--wandb", "off", "--no-progress", "--no-checkpoint", "--out", str(tmp_path / "out")]
    code = ("import json, sys\n"
            "from cl_iad.cli import main\n"
            f"rc = main({argv!r})\n"
            "print(json.dumps({'rc': rc, 'modules': sorted(m for m in sys.modules if m.startswith('cl_iad.models.'))}))\n")
    proc = _python(code, tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["rc"] == 0, proc.stderr[-2000:]
    assert set(report["modules"]) & _model_modules() == {"cl_iad.models.patchcore"}, report["modules"]
    assert _warning_lines(proc.stderr) == [], proc.stderr[-2000:]
