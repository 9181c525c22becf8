"""Names and constants shared by every step: modalities, class names, buckets, registry names.

Kept in one place so the preprocessing manifest, the trained model's metadata, the registry and
the serving signature all agree on what label 3 means.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

MODALITIES = ("fundus", "oct")

# Label index -> human name. Fundus follows the Kaggle/EyePACS 2015 grading; OCT the Kermany 2018 classes.
CLASS_NAMES: dict[str, list[str]] = {
    "fundus": ["No DR", "Mild", "Moderate", "Severe", "Proliferative"],
    "oct": ["NORMAL", "CNV", "DME", "DRUSEN"],
}

# Kermany folder name -> label index (the folder names are the class names).
OCT_CLASS_INDEX = {name: i for i, name in enumerate(CLASS_NAMES["oct"])}

REGISTERED_MODEL: dict[str, str] = {"fundus": "retina-fundus", "oct": "retina-oct"}

# Buckets the local stack creates; on a cluster the same names live on the cluster's S3.
BUCKETS = ("raw", "datasets", "mlflow", "models", "reports", "pipeline-root")

ALIAS_CHALLENGER = "challenger"
ALIAS_CHAMPION = "champion"


def check_modality(modality: str) -> str:
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}: expected one of {', '.join(MODALITIES)}")
    return modality


def retina_home() -> Path:
    """Where the local stack keeps its state (pids, data, env file). `RETINA_HOME` overrides `./.retina`."""
    return Path(os.environ.get("RETINA_HOME", ".retina")).resolve()


STACK_ENV_FILE = "stack.env"


def read_env_file(path: str | Path) -> dict[str, str]:
    """`export KEY=value` lines (as `retina stack up` writes them) -> dict; empty when there is no file."""
    path = Path(path)
    if not path.exists():
        return {}
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip().removeprefix("export ").strip()
        key, sep, rest = line.partition("=")
        if not line or line.startswith("#") or not sep:
            continue
        words = shlex.split(rest)
        out[key.strip()] = words[0] if words else ""
    return out


def apply_stack_env(home: str | Path | None = None) -> bool:
    """Load `<home>/stack.env` into os.environ for variables not already set; True when a file was read.

    Lets every `retina` command find the local stack after `retina stack up` without sourcing the file,
    while a cluster's injected Secret or a user's own endpoint (already in the environment) still wins.
    The library reads the file; only the local tooling (`infra.local.stack`) writes it.
    """
    values = read_env_file(Path(home).resolve() / STACK_ENV_FILE if home else retina_home() / STACK_ENV_FILE)
    for key, value in values.items():
        os.environ.setdefault(key, value)
    return bool(values)


def code_version() -> str:
    """Package version plus the git commit when run from a checkout (recorded in manifests and registry tags)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("retina-xai")
    except PackageNotFoundError:  # pragma: no cover - running from a bare source tree
        v = "0+unknown"
    commit = os.environ.get("RETINA_GIT_COMMIT")
    if not commit:
        head = Path(__file__).resolve().parents[2] / ".git" / "HEAD"
        try:
            ref = head.read_text().strip()
            if ref.startswith("ref: "):
                ref_file = head.parent / ref[5:]
                commit = ref_file.read_text().strip() if ref_file.exists() else ""
            else:
                commit = ref
        except OSError:
            commit = ""
    return f"{v}+g{commit[:10]}" if commit else v
