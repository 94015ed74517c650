"""A Keras model to a SavedModel folder or TFLite bytes, the PNI noise kept convertible.

A noisy layer's filter `w + alpha * eta * (w != 0)` is drawn at run time, so
the converter never sees a constant it could quantise or sparse-encode. For
the quantised and sparse TFLite files each noisy layer is traced split,
`conv(x, w) + conv(x, noise)` (`rsr_tf.layers.set_noise_split`), which
leaves `w` a constant; plain float keeps one `conv(x, w + noise)`, half the
convolutions. Every TFLite file draws normals for the kept weights only
(`rsr_tf.layers.set_kept_draw`): the random op is what noise costs.
"""

import rsr_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf

from rsr_tf import layers as rsr_layers
from rsr_tf import litert
from rsr_tf import pruning
from rsr_tf.artifacts import ExportError
from rsr_tf.artifacts import INPUT_NAME
from rsr_tf.artifacts import OUTPUT_NAME
from rsr_tf.artifacts import QUANTIZED
from rsr_tf.artifacts import SIGNATURE_KEY
from rsr_tf.artifacts import image_shape


def _serving_function(model):
  """The serving signature: float32 images [N, H, W, C] -> {"logits"}."""
  @tf.function(input_signature=[
      tf.TensorSpec((None,) + image_shape(model), tf.float32,
                    name=INPUT_NAME)])
  def serve(image):
    return {OUTPUT_NAME: model(image, training=False)}
  return serve


def _trackable(model, serve):
  """A tf.Module holding the model's variables, kernels under their layer names.

  Saving this instead of the Keras model keeps Keras' own serialisation out
  of the SavedModel, and the named kernels let the artifact's sparsity be
  read back from its checkpoint.
  """
  module = tf.Module()
  module.kernels = pruning.kernels(model)
  kernel_ids = {id(v) for v in module.kernels.values()}
  module.other_variables = [v for v in model.variables
                            if id(v) not in kernel_ids]
  module.serve = serve
  return module


def write_saved_model(model, path):
  """Saves `model` as a SavedModel folder with the `SIGNATURE_KEY` signature.

  The model's own `conv(x, w + noise)` is kept (no split).

  Raises:
    ExportError: TensorFlow cannot save the model.
  """
  try:
    serve = _serving_function(model)
    module = _trackable(model, serve)
    tf.saved_model.save(module, path, signatures={
        SIGNATURE_KEY: serve.get_concrete_function()})
  except (ValueError, TypeError, tf.errors.OpError) as e:
    raise ExportError(f"saved_model: cannot save: "
                      f"{litert.first_line(e)}") from e


def tflite_converter(model):
  """The TFLiteConverter of `model`'s serving function, no options set.

  convert_tflite sets the options of each format; a caller that sets the
  layers' noise switches itself (benchmarks/noise_cost.py) converts with it.
  """
  serve = _serving_function(model)
  return tf.lite.TFLiteConverter.from_concrete_functions(
      [serve.get_concrete_function()], _trackable(model, serve))


def noise_nodes(content):
  """Output names of the ops in the PNI noise path of a TFLite model."""
  model = litert.read_model(content)
  names = set()
  for graph in model.subgraphs:
    for op in graph.operators or []:
      for out in op.outputs:
        name = graph.tensors[out].name
        name = name.decode() if isinstance(name, bytes) else name
        if rsr_layers.NOISE_SCOPE in name:
          names.add(name)
  return sorted(names)


def convert_tflite(model, fmt, sparse, representative, noisy):
  """Returns (bytes, notes) of one TFLite format of `model`.

  Args:
    model: the Keras model.
    fmt: "tflite_float", "tflite_dynamic", "tflite_int8" or
      "tflite_int16x8".
    sparse: add `tf.lite.Optimize.EXPERIMENTAL_SPARSITY`.
    representative: float32 images [N, H, W, C] to calibrate int8 on.
    noisy: the model keeps its PNI noise: draw it for the kept weights
      only, and where `w` must stay a constant the converter can quantise
      or sparse-encode, trace each noisy layer split.

  Raises:
    ExportError: the converter failed.
  """
  # The 16x8 quantiser has no denylist and would make the scatter of the
  # kept draw int16, which LiteRT cannot run: that format draws per weight.
  rsr_layers.set_kept_draw(model, noisy and fmt != "tflite_int16x8")
  rsr_layers.set_noise_split(model, noisy and (fmt in QUANTIZED or sparse))
  try:
    return _convert_tflite_split(model, fmt, sparse, representative)
  except Exception as e:  # the converter's own error types are private
    raise ExportError(f"{fmt}: conversion failed: "
                      f"{litert.first_line(e)}") from e
  finally:
    rsr_layers.set_noise_split(model, False)
    rsr_layers.set_kept_draw(model, False)


def _convert_tflite_split(model, fmt, sparse, representative):
  converter = tflite_converter(model)
  notes = []
  sparsity = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY] if sparse else []
  if fmt == "tflite_int16x8":
    # Converter's own 16x8 path; ops it cannot quantise (the noise draw and
    # the convolution with the noise filter) stay float.
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([x[None]] for x in representative)
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8,
        tf.lite.OpsSet.TFLITE_BUILTINS]
    if sparse:
      # Sparse-encoded int8 weights under int16 activations give wrong
      # outputs in LiteRT 2.3 (one class for every image of the tests),
      # whether encoded during conversion or after it.
      notes.append("weights stored dense: LiteRT runs sparse-encoded 16x8 "
                   "models wrongly")
    return converter.convert(), notes
  if fmt != "tflite_int8":
    converter.optimizations = (
        ([tf.lite.Optimize.DEFAULT] if fmt in QUANTIZED else []) + sparsity)
    return converter.convert(), notes
  # Sparse encoding comes last, after quantisation (below), as in the
  # converter's own int8 path.
  converter.optimizations = [tf.lite.Optimize.DEFAULT]
  converter.representative_dataset = lambda: ([x[None]] for x in representative)
  # The noise path's filter is computed at run time; int8 convolution needs a
  # constant, symmetric filter and refuses it. So with the noise on, the model
  # is calibrated, then quantised with the noise path left in float, as
  # tf.lite.experimental.QuantizationDebugger does for denylisted nodes.
  converter._experimental_calibrate_only = True  # pylint: disable=protected-access
  calibrated = converter.convert()
  denylist = noise_nodes(calibrated)
  from tensorflow.lite.python import convert as tflite_convert  # pylint: disable=g-import-not-at-top
  quantized = tflite_convert.mlir_quantize(
      calibrated, denylisted_nodes=denylist or None)
  if denylist:
    notes.append(f"int8 weights and activations; the PNI noise path "
                 f"({len(denylist)} ops) runs in float")
  return (_sparsify(quantized) if sparse else quantized), notes


def _sparsify(content):
  """Sparse-encodes a quantised model's weights, after quantisation."""
  from tensorflow.lite.python import convert as tflite_convert  # pylint: disable=g-import-not-at-top
  return tflite_convert.mlir_sparsify(content)
