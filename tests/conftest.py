"""Shared test helpers: tiny models, a process without our package, and the Hub cache layout offline."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# Run in a child process so that `hf_vanilla_transformer` and `training` cannot be imported: the situation of a
# Hub user who loads a checkpoint with `trust_remote_code=True` without installing anything.
_BLOCK_PACKAGE = """
import sys
for _name in ("hf_vanilla_transformer", "training"):
    sys.modules[_name] = None  # makes `import _name` raise ImportError
sys.path = [p for p in sys.path if p not in ("", ".", {root!r})]
"""


def run_without_package(code: str, cwd: Path, env: dict | None = None, timeout: int = 300) -> str:
    """Run `code` in a fresh Python where our packages are not importable; return stdout, fail with stderr."""
    script = _BLOCK_PACKAGE.format(root=str(REPO_ROOT)) + textwrap.dedent(code)
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", **(env or {})}
    full_env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"child failed:\nSTDOUT:\n{result.stdout}\nSTDERR:\n{result.stderr}"
    return result.stdout


def make_hub_cache(folder: Path, cache_dir: Path, repo_id: str, revision: str = "a" * 40) -> Path:
    """Lay `folder` out as the Hub cache does for a downloaded model repo, so `from_pretrained(repo_id)` works
    with HF_HUB_OFFLINE=1 and HF_HUB_CACHE=cache_dir: models--ORG--NAME/snapshots/<sha>/ + refs/main."""
    repo_dir = cache_dir / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / revision
    shutil.copytree(folder, snapshot)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(revision)
    return snapshot


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA
