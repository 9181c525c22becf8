"""`ExplainConfig`: every parameter of the explanation job, defaults written once.

`explain_images` takes one; `retina explain` generates its flags from the fields (`add_arguments`,
`from_args`); the KFP component builds one from its inputs. Importing this module is cheap (no TF).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from components.common.errors import RetinaError

# layercam-fused first: it is the report's primary (its pointing game heads the summary, the gate reads it)
# because it is the method whose maps sit on the lesions of the synthetic sets (README, "Explanations").
DEFAULT_METHODS = "layercam-fused,gradcam,gradcam++,layercam"
BASELINES = ("grey", "blur")
MAP_SELECTIONS = ("first", "most_active")
# Zhang et al. 2016 (and the TorchRay benchmark) count a hit within 15 px of the object at 224 px input.
POINTING_TOLERANCE_AT_224 = 15.0
# Pixel range a model expects -> (scale, offset) applied to [0, 1] images. The project's models take [0, 1];
# a Keras file from elsewhere may take raw 0-255 pixels or [-1, 1].
INPUT_RANGES: dict[str, tuple[float, float]] = {"0-1": (1.0, 0.0), "0-255": (255.0, 0.0), "-1-1": (2.0, -1.0)}


@dataclass(frozen=True)
class ExplainConfig:
    """Every parameter of the explanation job, with its default written once.

    `explain_images`, `retina explain` (flags generated from these fields) and the KFP component all
    take one. Checked on construction, so a typo fails before a model is loaded.
    """

    methods: str = DEFAULT_METHODS  # comma-separated CAM methods; the first one is the report's primary
    max_images: int = 16
    run_name: str = ""  # report folder name; "" = UTC timestamp
    batch_size: int = 16
    cam_layer: str = ""  # CAM target layer; "" = the last layer with a 4-D output
    layers: tuple[str, ...] = ()  # feature-map / filter-view layers; () = every conv layer / the last conv
    maps_per_layer: int = 32
    map_selection: str = "first"
    feature_map_images: int = 1
    filter_count: int = 8  # filters per layer visualised by activation maximisation
    filter_steps: int = 32
    faithfulness_steps: int = 16  # deletion/insertion steps; 0 = skip
    # deletion/insertion baseline: a blurred copy keeps each image's own intensities where pixels are "removed";
    # flat grey is out of distribution for OCT (a demo OCT model read it as CNV: its faithful maps scored < 0)
    baseline: str = "blur"
    thresholds: str | Mapping[str, tuple[str, float]] = ""  # faithfulness gate; "" = defaults, "none" = off
    input_range: str = "0-1"  # pixel range the model expects
    pointing_tolerance: float = POINTING_TOLERANCE_AT_224  # px at 224 px input, scaled to the model's size
    champion: str = ""  # the champion's model URI: its maps beside this model's, with SSIM; "" = none
    progress: bool = True

    def __post_init__(self) -> None:
        from components.explain.cam import parse_methods
        from components.explain.faithfulness import parse_thresholds

        if isinstance(self.layers, str):
            object.__setattr__(self, "layers", tuple(s.strip() for s in self.layers.split(",") if s.strip()))
        else:
            object.__setattr__(self, "layers", tuple(self.layers or ()))
        if not isinstance(self.methods, str):
            object.__setattr__(self, "methods", ",".join(self.methods))
        parse_methods(self.methods)
        if isinstance(self.thresholds, str):
            parse_thresholds(self.thresholds)
        checks = [
            (self.input_range in INPUT_RANGES, f"unknown input range {self.input_range!r}: expected one of "
                                               f"{', '.join(INPUT_RANGES)}"),
            (self.max_images >= 1, f"max_images must be at least 1, got {self.max_images}"),
            (self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}"),
            (self.baseline in BASELINES, f"unknown baseline {self.baseline!r}: expected one of {', '.join(BASELINES)}"),
            (self.map_selection in MAP_SELECTIONS, f"unknown map selection {self.map_selection!r}"),
            (self.pointing_tolerance >= 0, f"pointing_tolerance must be >= 0, got {self.pointing_tolerance}"),
        ]
        for ok, message in checks:
            if not ok:
                raise RetinaError(message)

    @property
    def method_names(self) -> list[str]:
        from components.explain.cam import parse_methods

        return parse_methods(self.methods)

    @property
    def gate_thresholds(self) -> dict[str, tuple[str, float]] | None:
        """The gate's thresholds (None = the defaults of `faithfulness.DEFAULT_THRESHOLDS`)."""
        from components.explain.faithfulness import parse_thresholds

        if isinstance(self.thresholds, str):
            return parse_thresholds(self.thresholds)
        return dict(self.thresholds)

    def tolerance_px(self, image_size: int) -> int:
        """The pointing-game tolerance on an `image_size` grid (15 px at 224 px -> 9 px at 128 px)."""
        return int(round(self.pointing_tolerance * image_size / 224.0))

    def replace(self, **changes: Any) -> ExplainConfig:
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"unknown explain parameter(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)


# Flag help for `retina explain`; a field missing here gets no flag (`progress`: the CLI always shows it).
HELP: dict[str, str] = {
    "methods": "comma-separated CAM methods: gradcam, gradcam++, hirescam, layercam, layercam-fused, scorecam "
    "(the first is the report's primary)",
    "max_images": "explain at most N images",
    "run_name": "report folder name (default: UTC timestamp)",
    "batch_size": "images per CAM batch",
    "cam_layer": "CAM target layer (default: the last layer with a 4-D output)",
    "layers": "comma-separated layers for feature maps and filter views (default: all conv layers / last conv)",
    "maps_per_layer": "feature maps shown per layer",
    "map_selection": "which feature maps: first | most_active",
    "feature_map_images": "images whose feature maps are shown",
    "filter_count": "filters per layer to visualise by activation maximisation",
    "filter_steps": "gradient-ascent steps per filter view",
    "faithfulness_steps": "deletion/insertion steps (0 = skip)",
    "baseline": "deletion/insertion baseline: blur (a blurred copy, default) | grey (flat 0.5)",
    "champion": "the champion's model URI: its heatmaps beside this model's, with their SSIM, in the report",
    "thresholds": 'faithfulness gate, e.g. "randomization_ssim<=0.5,pointing_game>=0.3" '
    '(default: randomization_ssim<=0.5,insertion_minus_deletion>=0; "none" = no gate)',
    "input_range": "pixel range the model expects: 0-1 (the project's models), 0-255 or -1-1",
    "pointing_tolerance": "pointing-game tolerance in px at 224 px input, scaled to the model's size (Zhang et al.)",
}
FLAG_NAMES = {"filter_count": "filters"}  # flags whose name predates the config


def add_arguments(parser: argparse.ArgumentParser, defaults: ExplainConfig | None = None) -> None:
    """One `--flag` per `ExplainConfig` field in `HELP`, typed and defaulted from the dataclass."""
    defaults = defaults or ExplainConfig()
    for f in dataclasses.fields(ExplainConfig):
        if f.name not in HELP:
            continue
        value = getattr(defaults, f.name)
        flag = "--" + FLAG_NAMES.get(f.name, f.name).replace("_", "-")
        kind = type(value) if isinstance(value, int | float) and not isinstance(value, bool) else str
        shown = ",".join(value) if isinstance(value, tuple) else value
        parser.add_argument(flag, dest=f.name, type=kind, default=shown, help=f"{HELP[f.name]} (default {shown!r})")


def from_args(args: argparse.Namespace, **extra: Any) -> ExplainConfig:
    """The config a parsed `retina explain` command line asks for."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(ExplainConfig) if hasattr(args, f.name)}
    return ExplainConfig(**(values | extra))
