"""The two real retinal images that ship inside scikit-image, written where the pipeline can read them.

No Kaggle download is possible offline; these give every test and the demo at least two genuine
photographs next to the synthetic sets: `skimage.data.retina()` (a 1411×1411 colour fundus photo)
and `skimage.data.microaneurysms()` (a grey DR crop, stored as it is).
"""

from __future__ import annotations

import numpy as np

from components.common import storage
from infra.local.synthetic import encode_jpeg

SAMPLE_NAMES = ("retina.jpg", "microaneurysms.jpg")


def sample_images() -> dict[str, np.ndarray]:
    """{file name: uint8 array} for the two scikit-image retina images (RGB and grey)."""
    from skimage import data

    return {"retina.jpg": data.retina(), "microaneurysms.jpg": data.microaneurysms()}


def write_samples(out_uri: str) -> list[str]:
    """Write `retina.jpg` and `microaneurysms.jpg` under `out_uri` (local or s3://); returns their URIs."""
    written = []
    for name, image in sample_images().items():
        uri = storage.join(out_uri, name)
        storage.write_bytes(uri, encode_jpeg(image))
        written.append(uri)
    return written
