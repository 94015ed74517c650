"""TFLite artifacts through LiteRT: an interpreter that falls back, and weights read from the file.

Nothing here imports TensorFlow: only numpy and `ai_edge_litert`. Latency is
timed by `rsr_tf.latency.median_ms`, as for every other runtime.
"""

import numpy as np
from ai_edge_litert import interpreter as litert
from ai_edge_litert import schema_py_generated as schema

DEFAULT_RESOLVER = "AUTO"
FALLBACK_RESOLVER = "BUILTIN_WITHOUT_DEFAULT_DELEGATES"

# Ops whose input 1 is a weight tensor (filter or right-hand matrix).
_WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED",
               "BATCH_MATMUL", "TRANSPOSE_CONV")
# Ops that only change how a stored weight is encoded; followed to the
# constant they read.
_PASS_THROUGH_OPS = ("DENSIFY", "DEQUANTIZE")

_NUMPY_TYPES = {
    "FLOAT32": np.float32, "FLOAT16": np.float16, "INT8": np.int8,
    "UINT8": np.uint8, "INT16": np.int16, "INT32": np.int32,
}


def _names(enum_class):
  return {value: name for name, value in vars(enum_class).items()
          if not name.startswith("_")}


_OP_NAMES = _names(schema.BuiltinOperator)
_TYPE_NAMES = _names(schema.TensorType)


class Model:
  """A `.tflite` model in a LiteRT interpreter, one batch per invoke.

  XNNPACK, the default delegate, cannot prepare sparse (EXPERIMENTAL_SPARSITY)
  weights. When the default set-up fails for any reason, the model is built
  again with the builtin kernels and no default delegates; `op_resolver` and
  `fallback_reason` say which was used and why.

  Args:
    model_path: a `.tflite` file (or pass `model_content`).
    model_content: the model's bytes.
    num_threads: interpreter threads; None lets LiteRT choose.
    op_resolver: `DEFAULT_RESOLVER` or `FALLBACK_RESOLVER` to use that
      set-up only (benchmarks compare them); None tries both, as above.

  Raises:
    ValueError or RuntimeError: from LiteRT, when neither set-up works.
  """

  def __init__(self, model_path=None, model_content=None, num_threads=None,
               op_resolver=None):
    self._kwargs = {"model_path": model_path, "model_content": model_content,
                    "num_threads": num_threads}
    self.fallback_reason = None
    if op_resolver is not None:  # exactly this set-up, no fallback
      self._interpreter = self._build(getattr(litert.OpResolverType, op_resolver))
      self.op_resolver = op_resolver
    else:
      self._default_set_up()
    self._input = self._interpreter.get_input_details()[0]
    self._output = self._interpreter.get_output_details()[0]
    self._batch = int(self._input["shape"][0])

  def _default_set_up(self):
    try:
      self._interpreter = self._build(litert.OpResolverType.AUTO)
      self.op_resolver = DEFAULT_RESOLVER
    except (RuntimeError, ValueError) as e:
      try:
        self._interpreter = self._build(
            litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
      except (RuntimeError, ValueError):
        raise e from None
      self.op_resolver = FALLBACK_RESOLVER
      self.fallback_reason = first_line(e)

  def _build(self, resolver):
    interp = litert.Interpreter(experimental_op_resolver_type=resolver,
                                **self._kwargs)
    interp.allocate_tensors()
    return interp

  @property
  def input_shape(self):
    """The input's shape with -1 for a free batch dimension."""
    return tuple(int(d) for d in self._input["shape_signature"])

  @property
  def input_dtype(self):
    return np.dtype(self._input["dtype"])

  def __call__(self, batch):
    """Runs one invoke on `batch` [N, ...] and returns the output array."""
    batch = np.ascontiguousarray(batch, dtype=self.input_dtype)
    if batch.shape[0] != self._batch:
      self._interpreter.resize_tensor_input(self._input["index"], batch.shape)
      self._interpreter.allocate_tensors()
      self._batch = batch.shape[0]
    self._interpreter.set_tensor(self._input["index"], batch)
    self._interpreter.invoke()
    return self._interpreter.get_tensor(self._output["index"]).copy()

  def predict(self, images, batch_size=128):
    """Outputs for `images`, `batch_size` per invoke (one noise draw each)."""
    if len(images) == 0:
      raise ValueError("predict needs at least one image")
    return np.concatenate([self(images[i:i + batch_size])
                           for i in range(0, len(images), batch_size)])


def first_line(error):
  """The first line of an error's message (LiteRT's run on for pages)."""
  text = str(error).strip()
  return text.splitlines()[0] if text else type(error).__name__


def read_model(content):
  """A `.tflite` model's bytes as the flatbuffer schema's object tree."""
  return schema.ModelT.InitFromPackedBuf(bytearray(content), 0)


def op_counts(content):
  """{builtin op name: count} over every subgraph of a `.tflite` model."""
  model = read_model(content)
  counts = {}
  for graph in model.subgraphs:
    for op in graph.operators or []:
      name = _op_name(model, op)
      counts[name] = counts.get(name, 0) + 1
  return counts


def _op_name(model, op):
  code = model.operatorCodes[op.opcodeIndex]
  # Codes above 127 live in builtinCode; the deprecated field caps at 127.
  return _OP_NAMES.get(max(code.builtinCode, code.deprecatedBuiltinCode),
                       "CUSTOM")


def _buffer_bytes(model, content, tensor):
  buffer = model.buffers[tensor.buffer]
  if buffer.offset and buffer.offset > 1:  # models stored past 2 GB
    return bytes(content[buffer.offset:buffer.offset + buffer.size])
  if buffer.data is None:
    return b""
  return np.asarray(buffer.data, dtype=np.uint8).tobytes()


def _metadata_bytes(sparsity):
  total = 0
  for dim in sparsity.dimMetadata or []:
    for vector in (dim.arraySegments, dim.arrayIndices):
      if vector is not None and vector.values is not None:
        total += np.asarray(vector.values).nbytes
  return total


def _zero_count(values, tensor, shape):
  """Stored entries equal to the tensor's zero (its zero point if quantised)."""
  zero_points = None
  quant = tensor.quantization
  if quant is not None and quant.zeroPoint is not None:
    zero_points = np.asarray(quant.zeroPoint)
  if zero_points is None or zero_points.size == 0 or not zero_points.any():
    return int(np.count_nonzero(values == 0))
  if zero_points.size == 1 or tensor.sparsity is not None:
    if zero_points.min() != zero_points.max():
      raise ValueError(f"tensor {tensor.name!r}: sparse storage with "
                       f"per-channel zero points is not supported")
    return int(np.count_nonzero(values == zero_points.flat[0]))
  axis_shape = [1] * len(shape)
  axis_shape[quant.quantizedDimension] = zero_points.size
  dense = values.reshape(shape)
  return int(np.count_nonzero(dense == zero_points.reshape(axis_shape)))


def random_seeds(content):
  """Sorted distinct (seed, seed2) pairs of the model's random ops.

  (0, 0) means LiteRT seeds each interpreter from the system's entropy, so
  two deployments draw different noise; any other pair repeats one sequence.
  """
  model = read_model(content)
  seeds = set()
  for graph in model.subgraphs:
    for op in graph.operators or []:
      if isinstance(op.builtinOptions, schema.RandomOptionsT):
        seeds.add((int(op.builtinOptions.seed), int(op.builtinOptions.seed2)))
  return sorted(seeds)


def random_draws(content):
  """Random numbers the model draws per invoke: the summed sizes of its random ops."""
  model = read_model(content)
  total = 0
  for graph in model.subgraphs:
    for op in graph.operators or []:
      if isinstance(op.builtinOptions, schema.RandomOptionsT):
        total += int(np.prod(graph.tensors[op.outputs[0]].shape))
  return total


def output_step(content):
  """Logit resolution of a model whose float output is dequantised int8.

  Returns:
    The quantisation scale of the tensor that the output DEQUANTIZE reads
    (one step of the int8 logits), or None when the output is not dequantised.
  """
  model = read_model(content)
  graph = model.subgraphs[0]
  output = int(graph.outputs[0])
  for op in graph.operators or []:
    if int(op.outputs[0]) == output:
      if _op_name(model, op) != "DEQUANTIZE":
        return None
      quant = graph.tensors[int(op.inputs[0])].quantization
      if quant is None or quant.scale is None or len(quant.scale) != 1:
        return None
      return float(quant.scale[0])
  return None


def weight_sparsity(content):
  """Sparsity measured on the weight tensors stored in a `.tflite` model.

  A weight is input 1 of a conv, fully-connected or batch-matmul op, followed
  back through DENSIFY/DEQUANTIZE to the constant holding it. Sparse-encoded
  tensors count their dense size; zeros are counted on the stored values
  (quantised zero = the zero point). Filters computed at run time (the PNI
  noise path) are counted apart, as `dynamic_filters`.

  Args:
    content: the model's bytes.

  Returns:
    {"overall": zeros / weights, "zeros", "weights", "stored_bytes" (values
     plus sparse index arrays), "sparse_encoded_tensors", "dynamic_filters",
     "per_tensor": [{"name", "shape", "dtype", "sparsity", "sparse_encoded"}]}.
  """
  model = read_model(content)
  zeros = total = stored = encoded = dynamic = 0
  per_tensor = []
  for graph in model.subgraphs:
    producer = {}
    for op in graph.operators or []:
      for out in op.outputs if op.outputs is not None else []:
        producer[int(out)] = op
    seen = set()
    for op in graph.operators or []:
      if _op_name(model, op) not in _WEIGHT_OPS or len(op.inputs) < 2:
        continue
      index = int(op.inputs[1])
      while index in producer and _op_name(
          model, producer[index]) in _PASS_THROUGH_OPS:
        index = int(producer[index].inputs[0])
      if index in seen:
        continue
      seen.add(index)
      tensor = graph.tensors[index]
      data = _buffer_bytes(model, content, tensor)
      if not data:
        dynamic += 1
        continue
      type_name = _TYPE_NAMES.get(tensor.type, str(tensor.type))
      if type_name not in _NUMPY_TYPES:
        raise ValueError(f"weight tensor {tensor.name!r} has unsupported "
                         f"type {type_name}")
      values = np.frombuffer(data, dtype=_NUMPY_TYPES[type_name])
      shape = [int(d) for d in tensor.shape]
      size = int(np.prod(shape))
      sparse = tensor.sparsity is not None
      if sparse:
        layer_zeros = size - (values.size - _zero_count(values, tensor, shape))
        stored += len(data) + _metadata_bytes(tensor.sparsity)
        encoded += 1
      else:
        layer_zeros = _zero_count(values, tensor, shape)
        stored += len(data)
      zeros += layer_zeros
      total += size
      per_tensor.append({
          "name": tensor.name.decode() if isinstance(tensor.name, bytes)
                  else str(tensor.name),
          "shape": shape, "dtype": type_name,
          "sparsity": layer_zeros / max(size, 1), "sparse_encoded": sparse})
  return {"overall": zeros / max(total, 1), "zeros": zeros, "weights": total,
          "stored_bytes": stored, "sparse_encoded_tensors": encoded,
          "dynamic_filters": dynamic, "per_tensor": per_tensor}
