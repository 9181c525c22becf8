"""The one place that names the container images.

Every `component.py` uses these as `base_image`; `make images` builds and tags them from
`infra/images/`. Override at compile time with `RETINA_IMAGE` / `RETINA_GPU_IMAGE` (for a private
registry) — the value is baked into the compiled pipeline YAML.
"""

from __future__ import annotations

import os

REGISTRY = os.environ.get("RETINA_REGISTRY", "ghcr.io/retina-xai")
VERSION = "0.1.0"

# CPU image: preprocess, evaluate, register, deploy, explain, and the local model server.
PROJECT_IMAGE = os.environ.get("RETINA_IMAGE", f"{REGISTRY}/retina-xai:{VERSION}")
# GPU image for training, built on the official TensorFlow GPU image.
GPU_IMAGE = os.environ.get("RETINA_GPU_IMAGE", f"{REGISTRY}/retina-xai-gpu:{VERSION}")
