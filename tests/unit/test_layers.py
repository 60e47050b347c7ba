"""The package's layers hold: imports point down only (import-linter), no module imports the
package root or another module's private names."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "tasklens"
#: the package root and the entry point may import anything
EXEMPT = {PACKAGE / "__init__.py", PACKAGE / "__main__.py"}


def modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if p not in EXEMPT)


def test_the_layers_contract_holds():
    lint = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    result = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "Contracts: 2 kept, 0 broken." in result.stdout


def test_no_module_imports_the_package_root_or_private_names():
    offences = []
    for path in modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        own = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                offences += [f"{own}: import {a.name}" for a in node.names if a.name == "tasklens"]
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tasklens"):
                for alias in node.names:
                    submodule = (PACKAGE / alias.name).with_suffix(".py").is_file() or (
                        PACKAGE / alias.name
                    ).is_dir()
                    if node.module == "tasklens" and not submodule:
                        offences.append(f"{own}: from tasklens import {alias.name}")
                    if alias.name.startswith("_") and alias.name != "__version__" and node.module != own:
                        offences.append(f"{own}: from {node.module} import {alias.name}")
    assert not offences, "\n".join(offences)
