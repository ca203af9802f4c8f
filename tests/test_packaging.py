"""What a non-editable install ships: every file the package reads at run time.

CI installs in editable mode, where the source tree is on the path and a missing package-data entry
goes unnoticed; a wheel without the web UI made `openqwen serve` fail at startup (StaticFiles needs
its directory).
"""

import fnmatch
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "openqwen"
BUILD_OUTPUTS = ("*.py", "*.pyc", "*.so", "*.pyd")


def test_package_data_covers_every_runtime_file():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_data = config["tool"]["setuptools"].get("package-data", {})
    missing = []
    for path in PACKAGE.rglob("*"):
        if not path.is_file() or "__pycache__" in path.parts or any(fnmatch.fnmatch(path.name, p) for p in BUILD_OUTPUTS):
            continue
        rel = path.relative_to(ROOT)
        covered = False
        for package, patterns in package_data.items():
            package_dir = ROOT / Path(*package.split("."))
            if package_dir in path.parents:
                inside = path.relative_to(package_dir).as_posix()
                covered = covered or any(fnmatch.fnmatch(inside, p) for p in patterns)
        if not covered:
            missing.append(str(rel))
    assert not missing, f"not in [tool.setuptools.package-data]: {missing}"


def test_web_ui_is_package_data():
    """The server's page is among the files the rule above keeps (and the rule is not vacuous)."""
    assert (PACKAGE / "server" / "webui" / "index.html").is_file()
