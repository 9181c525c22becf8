"""Model surgery: one flat Keras model that exposes inner layer outputs and the pre-softmax scores.

Why a rebuild instead of `keras.Model(model.input, model.get_layer(name).output)`: that idiom
only reaches top-level layers. A `keras.applications` backbone inside a functional model is one
opaque "layer" at the top level, and its inner layers' outputs belong to the *backbone's* graph, not
to the outer model's (the reason tf-keras-vis fails on nested models). Here the whole graph is
re-run on fresh symbolic inputs, recursing into nested Functional / Sequential models, and every
leaf layer's output is recorded on the way. Layers are *called*, not copied, so the probe shares the
original weights, and a single forward pass yields every requested tensor.

Scores: the trained models end in `Dense(activation=None)` -> `Softmax(name="probabilities")`; the
softmax is skipped so gradients are taken on logits (softmax gradients saturate and mix classes).
For other models: a final softmax `Activation`/`Softmax` layer is skipped the same way; a final
`Dense(activation="softmax")` is re-applied linearly (kernel and bias, no activation). Otherwise the
model's own output is used as the score and `score_kind` says `"output"`.

Layers are named by their path: `conv1` at the top level, `efficientnetb0/top_conv` inside a nested
backbone. `find_layer` also accepts the bare inner name when it is unique.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

CONV_LAYER_TYPES = ("Conv2D", "DepthwiseConv2D", "SeparableConv2D")


@dataclass
class LayerRef:
    """A leaf layer reached through the (possibly nested) graph, with its output's static shape."""

    path: str
    layer: Any
    shape: tuple[int | None, ...]

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


@dataclass
class _Trace:
    capture: set[str] | None  # paths to keep tensors of; None = every leaf
    skip_ids: set[int]
    linear_ids: set[int]
    refs: list[LayerRef] = field(default_factory=list)
    tensors: dict[str, Any] = field(default_factory=dict)


def _is_model(op: Any) -> bool:
    import keras

    return isinstance(op, keras.Model)


def _is_sequential(op: Any) -> bool:
    import keras

    return isinstance(op, keras.Sequential)


def _is_functional(op: Any) -> bool:
    return _is_model(op) and hasattr(op, "_run_through_graph") and hasattr(op, "_nodes_by_depth")


def _is_softmax_layer(op: Any) -> bool:
    import keras

    if isinstance(op, keras.layers.Softmax):
        return True
    if isinstance(op, keras.layers.Activation):
        return getattr(op.activation, "__name__", "") == "softmax"
    return False


def _final_layer(model: Any) -> Any:
    """The leaf layer that produces the model's output, looking inside a nested model when the output
    comes from one (a classifier wrapped in a preprocessing or rescaling model keeps its softmax inside)."""
    if _is_sequential(model):
        final = model.layers[-1]
    else:
        history = getattr(model.outputs[0], "_keras_history", None)
        final = history.operation if history is not None else None
    if final is not None and (_is_sequential(final) or _is_functional(final)):
        return _final_layer(final)
    return final


def _call_traced(op: Any, args: tuple, kwargs: dict, prefix: str, trace: _Trace) -> Any:
    """Call `op` on symbolic tensors; recurse into nested models; record leaf outputs."""
    path = f"{prefix}{op.name}"
    if id(op) in trace.skip_ids:  # the final softmax: pass the logits through
        return args[0]
    if id(op) in trace.linear_ids:  # final Dense(activation="softmax") -> its pre-activation
        import keras

        out = keras.ops.matmul(args[0], op.kernel)
        return out + op.bias if op.use_bias else out
    if _is_sequential(op):
        x = args[0]
        for layer in op.layers:
            x = _call_traced(layer, (x,), {}, f"{path}/", trace)
        return x
    if _is_functional(op):
        inner_inputs = args[0] if len(args) == 1 else list(args)
        outputs = op._run_through_graph(
            inner_inputs,
            operation_fn=lambda inner: (lambda *a, **k: _call_traced(inner, a, k, f"{path}/", trace)),
        )
        return outputs[0] if isinstance(outputs, list | tuple) and len(outputs) == 1 else outputs
    kwargs = {k: v for k, v in kwargs.items() if k != "training"}
    out = op(*args, **kwargs)
    first = out[0] if isinstance(out, list | tuple) else out
    shape = tuple(first.shape)
    trace.refs.append(LayerRef(path, op, shape))
    if trace.capture is None or path in trace.capture:
        trace.tensors[path] = first
    return out


def _run(model: Any, capture: set[str] | None, pre_softmax: bool) -> tuple[Any, Any, _Trace, str]:
    """Re-run `model` on fresh symbolic inputs. Returns (inputs, scores, trace, score_kind)."""
    import keras

    skip_ids: set[int] = set()
    linear_ids: set[int] = set()
    score_kind = "output"
    final = _final_layer(model)
    if pre_softmax and final is not None:
        if _is_softmax_layer(final):
            skip_ids.add(id(final))
            score_kind = "logits"
        elif isinstance(final, keras.layers.Dense) and getattr(final.activation, "__name__", "") == "softmax":
            linear_ids.add(id(final))
            score_kind = "logits"
    trace = _Trace(capture=capture, skip_ids=skip_ids, linear_ids=linear_ids)
    inputs = [keras.Input(batch_shape=tuple(t.shape), dtype=t.dtype) for t in model.inputs]
    scores = _call_traced(model, tuple(inputs) if len(inputs) > 1 else (inputs[0],), {}, "", trace)
    # The traced call of the outer model itself is recorded under "" prefix only for leaves.
    return inputs, scores, trace, score_kind


# Traces and probes per model: a model's graph never changes once built, and a probe shares the model's
# weights by reference, so both stay valid for the model's lifetime (weak keys: they go with it).
_CACHE: weakref.WeakKeyDictionary[Any, dict[Any, Any]] = weakref.WeakKeyDictionary()


def _cached(model: Any, key: Any, build: Any) -> Any:
    try:
        per_model = _CACHE.setdefault(model, {})
    except TypeError:  # pragma: no cover - not weak-referenceable: no caching
        return build()
    if key not in per_model:
        per_model[key] = build()
    return per_model[key]


def list_layers(model: Any) -> list[LayerRef]:
    """Every leaf layer in execution order, nested models flattened (paths like `backbone/conv`)."""

    def trace() -> list[LayerRef]:
        _, _, traced, _ = _run(model, capture=set(), pre_softmax=False)
        return _strip_root(traced.refs, model)

    return list(_cached(model, "layers", trace))


def _strip_root(refs: list[LayerRef], model: Any) -> list[LayerRef]:
    """Paths are recorded as `<model name>/<layer>`; the outer model's name is dropped."""
    root = f"{model.name}/"
    return [LayerRef(r.path[len(root):] if r.path.startswith(root) else r.path, r.layer, r.shape) for r in refs]


def _is_input_layer(layer: Any) -> bool:
    import keras

    return isinstance(layer, keras.layers.InputLayer)


def last_spatial_layer(model: Any) -> LayerRef:
    """The last layer whose output tensor is 4-D `[N, h, w, c]` (the usual Grad-CAM target).

    Decided from the symbolic output tensors of the traced graph, not `output_shape`, which nested
    models and multi-output layers do not report reliably.
    """
    from components.common.errors import RetinaError

    spatial = [r for r in list_layers(model) if r.rank == 4 and not _is_input_layer(r.layer)]
    if not spatial:
        raise RetinaError(f"model {model.name!r} has no layer with a 4-D output to explain")
    return spatial[-1]


_POOLING = ("MaxPooling2D", "AveragePooling2D")


def default_cam_layer(model: Any) -> LayerRef:
    """The CAM target when none is named: the last 4-D layer, stepping back over trailing pooling.

    A max-pool after the last convolution is a fixed operation that halves the map: the activation
    before it carries the same evidence at twice the resolution (16x16 instead of 8x8 for the
    project's DeepSense at any size), which is what lets a map point at a lesion rather than a region.
    """
    import keras

    pooling = tuple(getattr(keras.layers, t) for t in _POOLING)
    spatial = [r for r in list_layers(model) if r.rank == 4 and not _is_input_layer(r.layer)]
    if not spatial:
        from components.common.errors import RetinaError

        raise RetinaError(f"model {model.name!r} has no layer with a 4-D output to explain")
    while len(spatial) > 1 and isinstance(spatial[-1].layer, pooling):
        spatial.pop()
    return spatial[-1]


def stage_outputs(model: Any) -> list[LayerRef]:
    """The activation each pooling layer reduces (the output of every conv stage), shallow to deep."""
    import keras

    pooling = tuple(getattr(keras.layers, t) for t in _POOLING)
    refs = list_layers(model)
    return [prev for prev, ref in zip(refs, refs[1:], strict=False)
            if isinstance(ref.layer, pooling) and prev.rank == 4 and not _is_input_layer(prev.layer)]


def find_layer(model: Any, name: str) -> LayerRef:
    """A layer by path (`backbone/top_conv`) or by bare name when that name is unique."""
    from components.common.errors import RetinaError

    refs = list_layers(model)
    for r in refs:
        if r.path == name:
            return r
    by_name = [r for r in refs if r.name == name]
    if len(by_name) == 1:
        return by_name[0]
    if len(by_name) > 1:
        raise RetinaError(f"layer name {name!r} is ambiguous; use one of: {', '.join(r.path for r in by_name)}")
    raise RetinaError(f"no layer {name!r} in model {model.name!r}")


def conv_layers(model: Any) -> list[LayerRef]:
    """Every Conv2D / DepthwiseConv2D / SeparableConv2D, nested backbones included, in graph order."""
    import keras

    types = tuple(getattr(keras.layers, t) for t in CONV_LAYER_TYPES)
    return [r for r in list_layers(model) if isinstance(r.layer, types)]


@dataclass
class Probe:
    """A flat model: `probe(x)` -> `[*captured layer outputs, scores]` in one forward pass."""

    model: Any
    layer_paths: list[str]
    score_kind: str  # "logits" (softmax skipped) or "output" (model output used as is)
    _compiled: Any = field(default=None, repr=False)

    def __call__(self, images: Any, training: bool = False) -> tuple[list[Any], Any]:
        outs = self.model(images, training=training)
        if not isinstance(outs, list | tuple):
            outs = [outs]
        return list(outs[:-1]), outs[-1]

    def forward(self, images: Any) -> tuple[list[Any], Any]:
        """Inference pass compiled as one `tf.function` (traced once per image shape): eager Keras pays
        Python overhead per layer, as much as the arithmetic of a small model on a CPU."""
        import tensorflow as tf

        if self._compiled is None:
            self._compiled = tf.function(lambda x: self(x, training=False), reduce_retracing=True)
        return self._compiled(tf.convert_to_tensor(images, dtype=tf.float32))


def build_probe(model: Any, layer_paths: list[str], pre_softmax: bool = True) -> Probe:
    """One keras.Model exposing the named layers' outputs (paths as `list_layers` gives them) and scores.

    Built once per (model, layers, pre_softmax) and reused: tracing the graph costs more than a
    forward pass of a small model.
    """
    return _cached(model, ("probe", tuple(layer_paths), pre_softmax),
                   lambda: _build_probe(model, list(layer_paths), pre_softmax))


def _build_probe(model: Any, layer_paths: list[str], pre_softmax: bool) -> Probe:
    import keras

    from components.common.errors import RetinaError

    root = f"{model.name}/"
    wanted = {root + p for p in layer_paths}
    inputs, scores, trace, score_kind = _run(model, capture=wanted, pre_softmax=pre_softmax)
    missing = [p for p in layer_paths if root + p not in trace.tensors]
    if missing:
        raise RetinaError(f"layers not found in model {model.name!r}: {', '.join(missing)}")
    outputs = [trace.tensors[root + p] for p in layer_paths] + [scores]
    flat = keras.Model(inputs if len(inputs) > 1 else inputs[0], outputs, name=f"{model.name}_probe")
    return Probe(flat, list(layer_paths), score_kind)
