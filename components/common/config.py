"""Names and constants shared by every step: modalities, class names, buckets, registry names.

Kept in one place so the preprocessing manifest, the trained model's metadata, the registry and
the serving signature all agree on what label 3 means.
"""

from __future__ import annotations

import os
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
