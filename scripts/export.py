r"""Export a trained model to SavedModel and TFLite (float, dynamic-range, int8, 16x8), verified.

Example:
  python scripts/export.py --model=/tmp/run/model.keras --output_dir=/tmp/export \
    --formats=saved_model,tflite_float,tflite_dynamic,tflite_int8 --sparse \
    --image_folder=/tmp/cifar10

Every artifact is checked against the Keras model on held-out images; the
results go to OUTPUT_DIR/export.json and are printed as a table. If a check
fails the exit status is 1, OUTPUT_DIR is left as it was, and the build goes
to OUTPUT_DIR.failed for inspection.
"""

import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import rsr_tf  # noqa: E402,F401  (before TensorFlow: selects Keras 2)
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging as absl_logging  # noqa: E402

from rsr_tf import config as config_lib  # noqa: E402
from scripts import _cli  # noqa: E402

FLAGS = flags.FLAGS

FORMATS = config_lib.EXPORT_FORMATS


def define_flags():
  """Every flag of the export script, with its range."""
  flags.DEFINE_string("model", None, "The .keras model to export (e.g. "
                      "model.keras from scripts/train.py).")
  flags.DEFINE_string("output_dir", None, "Folder for the artifacts, "
                      "export.json and labels.txt; replaced as a whole.")
  flags.DEFINE_list("formats", list(config_lib.DEFAULT_EXPORT_FORMATS),
                    f"Comma-separated subset of {','.join(FORMATS)}.")
  flags.DEFINE_bool("sparse", False, "Sparse-encode the TFLite weights "
                    "(tf.lite.Optimize.EXPERIMENTAL_SPARSITY).")
  flags.DEFINE_enum("noise", "on", ["on", "off"], "on: keep the PNI weight "
                    "noise (robustness needs it); off: a deterministic model "
                    "with bit-stable outputs.")
  # Data: the same flags as scripts/train.py. The training split is the int8
  # representative set, the test split the verification images.
  _cli.define_data_flags(train_limit=500, eval_limit=500, augment=False)
  flags.adopt_module_key_flags(_cli)
  # Verification.
  flags.DEFINE_integer("noise_draws", 5, "Passes over the verification images "
                       "per accuracy when the noise is on.", lower_bound=2)
  flags.DEFINE_integer("latency_runs", 50, "Batch-1 invokes; the median is "
                       "the latency.", lower_bound=1)
  flags.DEFINE_integer("num_threads", 1, "LiteRT interpreter threads.",
                       lower_bound=1)
  flags.DEFINE_float("float_tolerance", 1e-4, "Largest |logit difference| "
                     "from Keras allowed for float artifacts (noise off).",
                     lower_bound=0)
  flags.DEFINE_float("min_agreement", 0.0, "Top-1 agreement with Keras "
                     "required of the quantised artifacts (noise off); 0: "
                     "reported, not gated (their gate is accuracy parity).",
                     lower_bound=0, upper_bound=1)


def _data_config():
  # Nothing is trained: the batch rule of training does not apply here.
  data = dataclasses.replace(_cli.data_config_from_flags(), batch_size=1)
  data.validate()
  return data


def _check_inputs():
  """Cheap checks of flags and paths, before anything heavy is loaded."""
  for name in ("model", "output_dir"):
    if not FLAGS[name].value:
      _cli.fail(f"--{name} is required")
  unknown = [f for f in FLAGS.formats if f not in FORMATS]
  if unknown or not FLAGS.formats:
    _cli.fail(f"--formats must be a non-empty subset of {','.join(FORMATS)}, "
              f"got {','.join(FLAGS.formats) or 'nothing'}")
  if not os.path.isfile(FLAGS.model):
    _cli.fail(f"--model {FLAGS.model!r} does not exist or is not a file")
  if not FLAGS.model.endswith(".keras"):
    _cli.fail(f"--model {FLAGS.model!r} must be a .keras file")
  _cli.check_image_folder(FLAGS.image_folder)
  try:
    return _data_config()
  except config_lib.ConfigError as e:
    _cli.fail(str(e))


def main(argv):
  if len(argv) > 1:
    _cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  data_config = _check_inputs()

  _cli.quiet_tensorflow_startup()  # heavy imports only after the checks
  # tf.saved_model.save logs every asset and fingerprint it writes at INFO.
  absl_logging.set_verbosity(absl_logging.WARNING)
  from rsr_tf import data as data_lib  # noqa: E402
  from rsr_tf import export_report  # noqa: E402
  from rsr_tf import exporter as export_lib  # noqa: E402
  config = export_lib.ExportConfig(
      formats=tuple(dict.fromkeys(FLAGS.formats)), sparse=FLAGS.sparse,
      noise=FLAGS.noise == "on", noise_draws=FLAGS.noise_draws,
      batch_size=FLAGS.batch_size, latency_runs=FLAGS.latency_runs,
      num_threads=FLAGS.num_threads, float_tolerance=FLAGS.float_tolerance,
      min_agreement=FLAGS.min_agreement)
  try:
    config.validate()
    from rsr_tf import models  # noqa: E402
    data_config = _cli.shaped_like(data_config,
                                   models.load(FLAGS.model).input_shape[1:])
    dataset = data_lib.load(data_config)
    report = export_lib.export(
        FLAGS.model, FLAGS.output_dir,
        representative_data=dataset.train.images,
        validation_data=(dataset.test.images, dataset.test.labels),
        class_names=dataset.class_names, config=config,
        data_source=dataset.source)
  except (data_lib.DataError, export_lib.ExportError, ValueError) as e:
    _cli.fail(str(e))
  print(export_report.format_table(report))
  if not report["passed"]:
    failed = ", ".join(f"{c['artifact']} {c['check']}"
                       for c in report["failed_checks"])
    print(f"{os.path.basename(sys.argv[0])}: error: checks failed ({failed}); "
          f"{FLAGS.output_dir} left unchanged, build kept in "
          f"{report['written_to']}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=_cli.parse_flags)
