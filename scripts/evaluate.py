"""Evaluate the robustness of a (noisy) model the way a reviewer would trust.

Runs clean, FGSM, PGD-k (with restarts), PGD-strong, MIM, EOT-PGD, APGD-CE/DLR
with EOT, black-box transfer and SPSA, an eps sweep, and the sanity checks of
Carlini et al. (2019). Every accuracy of a noisy model is mean ± std over
--noise_draws independent passes; attacks always face the noisy model.

Example:
  python scripts/evaluate.py --model=/tmp/run/model.keras \
    --image_folder=/data/cifar10 --eval_limit=500 --output_dir=/tmp/eval

eps flags are in 1/255 units of [0, 1] images.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import rsr_tf  # noqa: E402,F401  (before TensorFlow: selects Keras 2)
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from rsr_tf import config as config_lib  # noqa: E402
from scripts import _cli  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
  """Every flag of the evaluation script, with its range."""
  flags.DEFINE_string("model", None, "Model to evaluate: a .keras file, a "
                      "SavedModel directory or a .tflite file.")
  flags.DEFINE_string("source_model", None, "Model to craft transfer attacks on "
                      "(any format but .tflite), e.g. a separately trained PGD-AT "
                      "ResNet-20, or the Keras twin of a .tflite target.")
  flags.DEFINE_string("output_dir", None, "Where eval.json, eval.md and "
                      "accuracy_vs_eps.png go.")
  flags.DEFINE_bool("rescore", False, "Recompute robust accuracy (all attacks) "
                    "and the sanity checks of the evaluation already in "
                    "--output_dir from its per_example.npz, without attacking "
                    "again (--model unused).")
  _cli.define_data_flags(eval_limit=1000, training=False)
  flags.adopt_module_key_flags(_cli)
  flags.DEFINE_list("attacks", list(config_lib.EVAL_ATTACKS),
                    "Subset to run, from: " + ", ".join(config_lib.EVAL_ATTACKS))
  flags.DEFINE_float("eps", 8.0, "L-inf budget, in /255.", lower_bound=0,
                     upper_bound=255)
  flags.DEFINE_float("eps_step", 2.0, "PGD/MIM step size, in /255.", lower_bound=0)
  flags.DEFINE_integer("pgd_steps", 7, "Steps of PGD-k, MIM and EOT-PGD.",
                       lower_bound=1)
  flags.DEFINE_integer("strong_steps", 20, "Steps of the stronger PGD.",
                       lower_bound=1)
  flags.DEFINE_integer("restarts", 1, "PGD random restarts; worst case per "
                       "example is kept.", lower_bound=1)
  flags.DEFINE_integer("noise_draws", 5, "Independent noisy passes per accuracy.",
                       lower_bound=1)
  flags.DEFINE_integer("eot_samples", 10, "Noise draws averaged per EOT-PGD "
                       "gradient step.", lower_bound=1)
  flags.DEFINE_integer("apgd_steps", 20, "APGD iterations (AutoAttack: 100).",
                       lower_bound=1)
  flags.DEFINE_integer("apgd_eot_samples", 5, "Noise draws averaged in APGD's "
                       "forward passes (AutoAttack rand: 20).", lower_bound=1)
  flags.DEFINE_integer("apgd_restarts", 1, "APGD random restarts.", lower_bound=1)
  flags.DEFINE_integer("spsa_steps", 20, "SPSA optimisation steps.", lower_bound=1)
  flags.DEFINE_integer("spsa_samples", 64, "SPSA probes per step (even).",
                       lower_bound=2)
  flags.DEFINE_integer("blackbox_limit", 50, "Images attacked by SPSA.",
                       lower_bound=1)
  flags.DEFINE_list("eps_sweep", ["0", "2", "4", "8", "16"], "PGD eps values "
                    "(/255) for the accuracy-against-eps curve; 64 is always "
                    "added for the sanity check.")


def config_from_flags():
  """flags -> a frozen, validated EvalConfig."""
  try:
    sweep = tuple(float(e) / 255 for e in FLAGS.eps_sweep)
  except ValueError:
    raise config_lib.ConfigError(
        f"--eps_sweep must be numbers, got {','.join(FLAGS.eps_sweep)}")
  return config_lib.EvalConfig(
      attacks=tuple(FLAGS.attacks), eps=FLAGS.eps / 255,
      step_size=FLAGS.eps_step / 255, steps=FLAGS.pgd_steps,
      strong_steps=FLAGS.strong_steps, restarts=FLAGS.restarts,
      noise_draws=FLAGS.noise_draws, eot_samples=FLAGS.eot_samples,
      apgd_steps=FLAGS.apgd_steps, apgd_eot_samples=FLAGS.apgd_eot_samples,
      apgd_restarts=FLAGS.apgd_restarts, spsa_steps=FLAGS.spsa_steps,
      spsa_samples=FLAGS.spsa_samples, blackbox_limit=FLAGS.blackbox_limit,
      eps_sweep=sweep, batch_size=FLAGS.batch_size, seed=FLAGS.seed).validate()


def rescore(out):
  """Re-derives what eval.json computes from per-example results, in place."""
  paths = [os.path.join(out, n) for n in ("eval.json", "per_example.npz")]
  missing = [p for p in paths if not os.path.exists(p)]
  if missing:
    _cli.fail(f"--rescore: {missing[0]} does not exist (evaluate first)")
  _cli.quiet_tensorflow_startup()
  import json  # noqa: E402
  import numpy as np  # noqa: E402
  from rsr_tf import evaluation  # noqa: E402
  from rsr_tf import outputs  # noqa: E402
  with open(paths[0]) as f:
    report = json.load(f)
  with np.load(paths[1]) as saved:
    per_example = {n: saved[n] for n in saved.files if n != "labels"}
  suite = report["suite"]
  # "worst_case" was the headline before robust accuracy (all attacks).
  for name in ("worst_case", evaluation.HEADLINE):
    suite["results"].pop(name, None)
  entry = evaluation.robust_all_entry(per_example, report["config"]["eps"])
  if entry:
    suite["results"][evaluation.HEADLINE] = entry
  report["sanity_checks"] = evaluation.sanity_checks(suite)
  # A rerun of the same command supersedes the earlier record: the numbers
  # now in the file are the ones this commit derived.
  record = outputs.provenance()
  report["rescored"] = [r for r in report.get("rescored", [])
                        if r["command"] != record["command"]] + [record]
  outputs.write_json_atomic(paths[0], report)
  markdown = evaluation.report_markdown(report)
  outputs.write_text_atomic(os.path.join(out, "eval.md"), markdown)
  write_model_card(out, report)
  print(markdown)


def write_model_card(out, report):
  """model_card.json and MODEL_CARD.md beside eval.json, from it alone."""
  from rsr_tf import model_card  # noqa: E402
  from rsr_tf import outputs  # noqa: E402
  card = model_card.card(report)
  outputs.write_json_atomic(os.path.join(out, "model_card.json"), card)
  outputs.write_text_atomic(os.path.join(out, "MODEL_CARD.md"),
                            model_card.markdown(card))


def model_record(path, target):
  """eval.json's "model": what was scored, its size and, for Keras, its shape."""
  from rsr_tf import model_card  # noqa: E402
  from rsr_tf import outputs  # noqa: E402
  kind = ("savedmodel" if os.path.isdir(path) else
          os.path.splitext(path)[1].lstrip("."))
  record = {"path": os.path.abspath(path), "sha256": outputs.sha256_of(path),
            "format": kind, "input_shape": list(target.input_shape),
            "num_classes": target.num_classes, **model_card.file_sizes(path)}
  if target.model is not None:
    record.update(model_card.describe_keras(target.model))
  return record


def main(argv):
  if len(argv) > 1:
    _cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  if FLAGS.rescore:
    if not FLAGS.output_dir:
      _cli.fail("--output_dir is required")
    return rescore(FLAGS.output_dir)
  for name in ("model", "output_dir"):
    if not getattr(FLAGS, name):
      _cli.fail(f"--{name} is required")
  try:
    config = config_from_flags()
    data_config = _cli.data_config_from_flags()
    data_config.validate()
  except config_lib.ConfigError as e:
    _cli.fail(str(e))
  for name in ("model", "source_model"):
    path = getattr(FLAGS, name)
    if path and not os.path.exists(path):
      _cli.fail(f"--{name} {path!r} does not exist")
  _cli.check_image_folder(data_config.image_folder)
  _cli.check_output_dir(FLAGS.output_dir)

  _cli.quiet_tensorflow_startup()
  import numpy as np  # noqa: E402
  from rsr_tf import data as data_lib  # noqa: E402
  from rsr_tf import evaluation  # noqa: E402
  from rsr_tf import outputs  # noqa: E402
  from rsr_tf import plotting  # noqa: E402

  try:
    target = evaluation.load_classifier(FLAGS.model)
    source = (evaluation.load_classifier(FLAGS.source_model)
              if FLAGS.source_model else None)
    data = data_lib.load(_cli.shaped_like(data_config, target.input_shape))
  except (ValueError, data_lib.DataError) as e:
    _cli.fail(str(e))
  x = data.test.images.astype("float32") / 255.0
  y = data.test.labels
  print(f"evaluating {FLAGS.model} on {len(y)} images of {data.source}",
        file=sys.stderr, flush=True)
  suite = evaluation.run_suite(target, x, y, config, source=source)
  per_example = suite.pop("per_example")
  checks = evaluation.sanity_checks(suite)
  report = {
      "model": dict(model_record(FLAGS.model, target),
                    stochastic=suite["stochastic"]),
      "source_model": ({"path": os.path.abspath(FLAGS.source_model),
                        "sha256": outputs.sha256_of(FLAGS.source_model)}
                       if FLAGS.source_model else None),
      "data": {"source": data.source, "eval_examples": len(y),
               "config": data_config.__dict__},
      "config": config.__dict__,
      "suite": suite,
      "sanity_checks": checks,
      "provenance": outputs.provenance(),
  }
  out = FLAGS.output_dir
  outputs.write_json_atomic(os.path.join(out, "eval.json"), report)
  # [passes, examples] correctness per attack, so the headline (or any other
  # combination) can be recomputed without attacking again.
  with outputs.atomic_path(os.path.join(out, "per_example.npz")) as tmp:
    np.savez_compressed(tmp, labels=y, **per_example)
  if suite["eps_sweep"]:
    plotting.accuracy_vs_eps(suite["eps_sweep"],
                             os.path.join(out, "accuracy_vs_eps.png"),
                             clean=suite["results"].get("clean"),
                             title=os.path.basename(FLAGS.model))
  markdown = evaluation.report_markdown(report)
  outputs.write_text_atomic(os.path.join(out, "eval.md"), markdown)
  write_model_card(out, report)
  print(markdown)
  failed = [c["check"] for c in checks if c["status"] == "FAIL"]
  if failed:
    bar = "!" * 78
    print(f"{bar}\nSANITY CHECKS FAILED ({len(failed)}): the robustness numbers "
          "above may be\nan artefact of gradient masking, not robustness:\n  - "
          + "\n  - ".join(failed) + f"\n{bar}", file=sys.stderr)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=_cli.parse_flags)
