"""The API check (`make api-check`) passes on proto/ as it is and fails on a breaking change.

buf comes from proto/'s npm package; skipped without it unless ANTIPHON_REQUIRE_BUF=1 (CI).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

PROTO = Path(__file__).resolve().parents[2] / "proto"
BUF = PROTO / "node_modules" / ".bin" / "buf"
SESSION_SUMMARY = "  string summary = 4;  // empty when summary_redacted\n"
TURN_CREATED = "  int64 created_us = 3;\n"


def _buf() -> Path:
    if not BUF.exists():
        message = "buf is not installed: make setup (npm ci --prefix proto)"
        if os.environ.get("ANTIPHON_REQUIRE_BUF") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return BUF


def _run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(_buf()), *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=120)


def _copy(tmp: Path) -> Path:
    root = tmp / "proto"
    shutil.copytree(PROTO / "antiphon", root / "antiphon")
    shutil.copy(PROTO / "buf.yaml", root / "buf.yaml")
    return root


def _edit(root: Path, name: str, old: str, new: str) -> None:
    path = root / "antiphon" / "v1" / name
    text = path.read_text()
    assert old in text, f"{name} no longer has {old!r}: update this test"
    path.write_text(text.replace(old, new))


def test_the_api_passes_lint_and_has_no_breaking_change_since_the_baseline() -> None:
    assert _run(PROTO, "lint").returncode == 0
    done = _run(PROTO, "breaking", "--against", "baseline.binpb")
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_removed_field_is_a_breaking_change(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    _edit(root, "context.proto", SESSION_SUMMARY, "")
    done = _run(root, "breaking", "--against", str(PROTO / "baseline.binpb"))
    assert done.returncode != 0
    assert 'Previously present field "4" with name "summary" on message "Session" was deleted' in done.stdout


def test_a_changed_field_number_is_a_breaking_change(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    _edit(root, "context.proto", TURN_CREATED, "  int64 created_us = 7;\n")
    done = _run(root, "breaking", "--against", str(PROTO / "baseline.binpb"))
    assert done.returncode != 0
    assert '"created_us"' in done.stdout
    assert "Turn" in done.stdout
