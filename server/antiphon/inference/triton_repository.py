"""The Triton model repository: the committed templates under `models/`, filled in.

`antiphon models prepare --triton` copies each model folder of the repository
template (config.pbtxt + version folders with model.py) into a target directory
and writes the prepared model's directory into config.pbtxt (`@MODEL_DIR@`).
The Python-backend models import `antiphon`, so Triton must run with the
package importable (PYTHONPATH), see models/entrypoint.sh.
"""

from __future__ import annotations

import os
import shutil
import sysconfig
import tempfile
from pathlib import Path

from antiphon.errors import ModelMissing
from antiphon.inference.prepare_embedder import EMBEDDER_MODEL_NAME, embedder_model_dir, is_embedder_prepared
from antiphon.inference.prepare_llm import LLM_MODEL_NAME, is_llm_prepared, llm_model_dir

LLM_TRITON_MODEL = "antiphon_llm"
EMBED_TRITON_MODEL = "antiphon_embed"
PLACEHOLDER = "@MODEL_DIR@"
PATH_PLACEHOLDER = "@PYTHONPATH@"


def template_dir() -> Path:
    """`models/` at the repository root (or ANTIPHON_TRITON_TEMPLATES, for installed packages)."""
    override = os.environ.get("ANTIPHON_TRITON_TEMPLATES")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[3] / "models"


def python_path() -> str:
    """Where the Python-backend stub finds `antiphon` and its dependencies: this interpreter's.

    The stub embeds its own libpython and does not read PYTHONPATH, so the prepared
    model.py puts these on sys.path (ANTIPHON_PYTHONPATH at run time overrides them).
    """
    package_root = Path(__file__).resolve().parents[2]
    paths = [str(package_root), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    return os.pathsep.join(dict.fromkeys(paths))


def prepare_triton_repository(models_dir: Path, repo_dir: Path) -> Path:
    """Write a Triton model repository for the prepared models into repo_dir; return repo_dir.

    Each model folder is replaced as a whole (built beside it, then renamed), so a
    running Triton never sees half a model. Raises ModelMissing if a model is not prepared.
    """
    models_dir = models_dir.resolve()
    sources = {
        LLM_TRITON_MODEL: (is_llm_prepared(models_dir), llm_model_dir(models_dir), LLM_MODEL_NAME),
        EMBED_TRITON_MODEL: (is_embedder_prepared(models_dir), embedder_model_dir(models_dir), EMBEDDER_MODEL_NAME),
    }
    for prepared, _, name in sources.values():
        if not prepared:
            raise ModelMissing(
                f"model {name!r} is not prepared in {models_dir}: run `antiphon models prepare "
                f"--models-dir {models_dir}` before `--triton`"
            )
    templates = template_dir()
    repo_dir.mkdir(parents=True, exist_ok=True)
    for triton_name, (_, model_dir, _) in sources.items():
        source = templates / triton_name
        if not (source / "config.pbtxt").is_file():
            raise ModelMissing(f"Triton model template {source / 'config.pbtxt'} is missing")
        staging = Path(tempfile.mkdtemp(prefix=f".{triton_name}-", dir=repo_dir))
        try:
            built = staging / triton_name
            shutil.copytree(source, built, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            config = built / "config.pbtxt"
            config.write_text(config.read_text().replace(PLACEHOLDER, str(model_dir.resolve())))
            for script in built.glob("*/model.py"):
                script.write_text(script.read_text().replace(PATH_PLACEHOLDER, python_path()))
            target = repo_dir / triton_name
            if target.exists():
                old = staging / "old"
                target.rename(old)
            built.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return repo_dir
