"""Model builders chosen by name: `deepsense`, `oct_cnn`, `efficientnetb0`, `resnet50`.

All take float32 `[N, S, S, 3]` images in `[0, 1]` and end, for the softmax head, in a Dense with
`activation=None` (the logits, named `logits`) followed by a `Softmax` layer named `probabilities`, so
explainers can read either. The regression head (DR option) ends in a Dense(1) named `grade`.
The heads stay float32 under mixed precision: softmax in float16 loses the small probabilities.

Keras is imported inside the functions so importing this module (e.g. from the CLI) is free.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from components.common.errors import RetinaError

MODEL_NAMES = ("deepsense", "oct_cnn", "efficientnetb0", "resnet50")
HEADS = ("softmax", "regression")

# ImageNet channel means in 0..255 RGB, as `keras.applications.resnet50.preprocess_input` ("caffe") uses them.
_CAFFE_MEAN_RGB = (123.68, 116.779, 103.939)


def _filters(base: int, width: float) -> int:
    return max(4, int(round(base * width)))


# Side of the last convolutions' output, the map the CAMs read by default. 16 gives 8 px cells at 128 px
# (lesion-sized, inside the pointing game's 9 px tolerance there); the 2015 net's "halve down to 4 px"
# gave 8x8 convolutions and a 4x4 pooled map at 128 px, cells of 16-32 px that cannot separate lesions.
# It also drops a stage (fewer weights, less compute) at every size.
FINAL_CONV_SIZE = 16


def deepsense_blocks(image_size: int, final_conv_size: int = FINAL_CONV_SIZE) -> int:
    """How many conv+pool stages: the last stage's convolutions see `final_conv_size` px maps
    (at least 2 and at most 7 stages)."""
    return int(min(7, max(2, 1 + math.floor(math.log2(max(image_size, 8) / final_conv_size)))))


def _head(x: Any, num_classes: int, head: str, dropout: float, hidden: int | None) -> Any:
    from keras import layers

    if dropout:
        x = layers.Dropout(dropout, name="head_dropout")(x)
    if hidden:
        x = layers.Dense(hidden, name="head_dense")(x)
        x = layers.LeakyReLU(negative_slope=0.01, name="head_leaky_relu")(x)
        if dropout:
            x = layers.Dropout(dropout, name="head_dropout_2")(x)
    if head == "regression":
        return layers.Dense(1, activation=None, dtype="float32", name="grade")(x)
    logits = layers.Dense(num_classes, activation=None, dtype="float32", name="logits")(x)
    return layers.Softmax(dtype="float32", name="probabilities")(logits)


def build_deepsense(image_size: int, num_classes: int, head: str = "softmax", width: float = 1.0,
                    dropout: float = 0.5) -> Any:
    """VGG-like net in the spirit of the DeepSense entry (6th, Kaggle DR 2015).

    Stages of 3x3 convolutions with batch norm (which the 2015 nets lacked; it lets short runs converge)
    and leaky ReLU, 2x2 max-pooling, filters 32 -> 64 -> ... capped at
    512 (times `width`), two convolutions per stage after the first; the number of stages follows the
    input size so the last stage's convolutions see 16x16 maps at any input size (`deepsense_blocks`),
    the layer the CAMs read. Global max+average pooling, a dropout'd dense layer, then the head.
    """
    import keras
    from keras import layers

    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = inputs
    for b in range(deepsense_blocks(image_size)):
        filters = _filters(min(32 * 2**b, 512), width)
        for c in range(1 if b == 0 else 2):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"block{b + 1}_conv{c + 1}")(x)
            x = layers.BatchNormalization(momentum=0.9, name=f"block{b + 1}_bn{c + 1}")(x)
            x = layers.LeakyReLU(negative_slope=0.01, name=f"block{b + 1}_leaky_relu{c + 1}")(x)
        x = layers.MaxPooling2D(2, name=f"block{b + 1}_pool")(x)
    x = layers.Concatenate(name="global_pool")(
        [layers.GlobalMaxPooling2D(name="global_max")(x), layers.GlobalAveragePooling2D(name="global_avg")(x)]
    )
    outputs = _head(x, num_classes, head, dropout, hidden=_filters(512, width))
    return keras.Model(inputs, outputs, name="deepsense")


def build_oct_cnn(image_size: int, num_classes: int, head: str = "softmax", width: float = 1.0,
                  dropout: float = 0.3) -> Any:
    """Compact CNN for OCT B-scans: four conv stages (32-64-128-128), batch norm, global average pooling."""
    import keras
    from keras import layers

    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = inputs
    for b, base in enumerate((32, 64, 128, 128)):
        x = layers.Conv2D(_filters(base, width), 3, padding="same", use_bias=False, name=f"conv{b + 1}")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"conv{b + 1}_bn")(x)
        x = layers.ReLU(name=f"conv{b + 1}_relu")(x)
        if b < 3:
            x = layers.MaxPooling2D(2, name=f"pool{b + 1}")(x)
    x = layers.GlobalAveragePooling2D(name="global_avg")(x)
    outputs = _head(x, num_classes, head, dropout, hidden=None)
    return keras.Model(inputs, outputs, name="oct_cnn")


def _check_weights(weights: str | None) -> str | None:
    if weights is None or weights == "":
        return None
    if not Path(weights).is_file():
        raise RetinaError(f"backbone weights must be a local file (nothing is downloaded): {weights}")
    return str(weights)


def build_application(name: str, image_size: int, num_classes: int, head: str = "softmax",
                      weights: str | None = None, dropout: float = 0.3) -> Any:
    """A `keras.applications` backbone as a nested model inside our functional model with our head.

    Inputs in [0, 1] are brought to what each backbone was trained with, inside the model (so serving
    and explainers feed the same [0, 1] tensor): EfficientNet rescales 0..255 itself; ResNet50 wants
    "caffe" BGR minus the ImageNet mean, done here by a frozen 1x1 linear map (no custom layer needed).
    """
    import keras
    import numpy as np
    from keras import layers

    weights = _check_weights(weights)
    inputs = keras.Input((image_size, image_size, 3), name="image")
    if name == "efficientnetb0":
        x = layers.Rescaling(255.0, name="to_0_255")(inputs)
        backbone = keras.applications.EfficientNetB0(
            include_top=False, weights=weights, input_shape=(image_size, image_size, 3)
        )
    elif name == "resnet50":
        caffe = layers.Dense(3, trainable=False, name="imagenet_caffe_preprocess")
        x = caffe(inputs)
        # RGB [0,1] -> BGR [0,255] minus mean: out_c = 255 * in_(2-c) - mean_(2-c)
        kernel = np.zeros((3, 3), dtype="float32")
        for c in range(3):
            kernel[2 - c, c] = 255.0
        bias = -np.asarray(_CAFFE_MEAN_RGB[::-1], dtype="float32")
        caffe.set_weights([kernel, bias])
        backbone = keras.applications.ResNet50(
            include_top=False, weights=weights, input_shape=(image_size, image_size, 3)
        )
    else:  # pragma: no cover - guarded by build_model
        raise RetinaError(f"unknown backbone {name!r}")
    x = backbone(x)
    x = layers.GlobalAveragePooling2D(name="global_avg")(x)
    outputs = _head(x, num_classes, head, dropout, hidden=None)
    return keras.Model(inputs, outputs, name=name)


def build_model(name: str, modality: str, image_size: int, num_classes: int, head: str = "softmax",
                width: float = 1.0, weights: str | None = None) -> Any:
    """The one entry point: a Keras model for `name`, with input `[N, image_size, image_size, 3]`."""
    if name not in MODEL_NAMES:
        raise RetinaError(f"unknown model {name!r}: expected one of {', '.join(MODEL_NAMES)}")
    if head not in HEADS:
        raise RetinaError(f"unknown head {head!r}: expected one of {', '.join(HEADS)}")
    if head == "regression" and modality != "fundus":
        raise RetinaError(f"the regression head is for graded fundus images, not {modality!r}")
    if image_size < 32 and name in ("efficientnetb0", "resnet50"):
        raise RetinaError(f"{name} needs image_size >= 32, got {image_size}")
    if image_size < 16:
        raise RetinaError(f"image_size too small: {image_size}")
    if name == "deepsense":
        return build_deepsense(image_size, num_classes, head=head, width=width)
    if name == "oct_cnn":
        return build_oct_cnn(image_size, num_classes, head=head, width=width)
    return build_application(name, image_size, num_classes, head=head, weights=weights)
