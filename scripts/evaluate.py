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

import dataclasses
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import rsr_tf  # noqa: E402,F401  (before TensorFlow: selects Keras 2)
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from rsr_tf import config as config_lib  # noqa: E402
from scripts import _cli  # noqa: E402

FLAGS = flags.FLAGS
UNFINISHED = "unfinished_attacks"  # in --output_dir until the outputs are written


def define_flags():
  """Every flag of the evaluation script, with its range."""
  flags.DEFINE_string("model", None, "Model to evaluate: a .keras file, a "
                      "SavedModel directory or a .tflite file.")
  flags.DEFINE_string("source_model", None, "Model to craft transfer attacks on "
                      "(any format but .tflite), e.g. a separately trained PGD-AT "
                      "ResNet-20, or the Keras twin of a .tflite target.")
  flags.DEFINE_string("output_dir", None, "Where eval.json, eval.md and "
                      "accuracy_vs_eps.png go. Finished attacks are kept in its "
                      f"{UNFINISHED}/ until then: the same command carries on "
                      "after a break.")
  flags.DEFINE_bool("rescore", False, "Recompute robust accuracy (all attacks) "
                    "and the sanity checks of the evaluation already in "
                    "--output_dir from its per_example.npz, without attacking "
                    "again; --model (optional) names the scored file, to "
                    "describe it on the model card.")
  _cli.define_data_flags(eval_limit=1000, training=False)
  flags.adopt_module_key_flags(_cli)
  flags.DEFINE_enum("preset", "cpu", list(config_lib.EVAL_PRESETS),
                    "Attack set and budgets: cpu (every attack on every image, "
                    "CPU-sized, with the sanity checks), aa_rand (AutoAttack "
                    "for randomized defenses: APGD-CE + APGD-DLR, 100 steps, "
                    "20 EOT draws) or aa_standard (AutoAttack for deterministic "
                    "models: APGD-CE, APGD-T, Square-5000). Flags given "
                    "explicitly override the preset.")
  flags.DEFINE_list("attacks", list(config_lib.EvalConfig().attacks),
                    "Subset to run, from: " + ", ".join(config_lib.EVAL_ATTACKS))
  flags.DEFINE_enum("norm", "linf", list(config_lib.EVAL_NORMS), "Threat model "
                    "of PGD, FGSM, EOT-PGD, APGD and Square (MIM is L-inf only).")
  flags.DEFINE_float("eps", 8.0, "L-inf budget, in /255 units.", lower_bound=0,
                     upper_bound=255)
  flags.DEFINE_float("eps_step", 2.0, "PGD/MIM step size, in /255 units "
                     "(--norm=l2: in pixel units of [0, 1] images; default "
                     "there: --l2_eps / 4).", lower_bound=0)
  flags.DEFINE_float("l2_eps", 0.5, "--norm=l2: the L2 budget in pixel units "
                     "of [0, 1] images (not /255).", lower_bound=0)
  flags.DEFINE_integer("pgd_steps", 7, "Steps of PGD-k, MIM and EOT-PGD.",
                       lower_bound=1)
  flags.DEFINE_integer("strong_steps", 20, "Steps of the stronger PGD.",
                       lower_bound=1)
  flags.DEFINE_integer("restarts", 1, "PGD random restarts; per example the "
                       "one of highest loss is kept.", lower_bound=1)
  flags.DEFINE_integer("noise_draws", 5, "Independent noisy passes per accuracy.",
                       lower_bound=1)
  flags.DEFINE_integer("eot_samples", 10, "Noise draws averaged per EOT-PGD "
                       "gradient step.", lower_bound=1)
  flags.DEFINE_integer("apgd_steps", 20, "APGD iterations (AutoAttack: 100).",
                       lower_bound=1)
  flags.DEFINE_integer("apgd_eot_samples", 5, "Noise draws averaged in APGD's "
                       "steps (AutoAttack rand: 20).", lower_bound=1)
  flags.DEFINE_integer("apgd_restarts", 1, "APGD random restarts.", lower_bound=1)
  flags.DEFINE_integer("apgd_targets", 9, "APGD-T: most target classes per "
                       "image (at most classes - 1 are used).", lower_bound=1)
  flags.DEFINE_integer("square_queries", 1000, "Square attack queries per "
                       "image (AutoAttack: 5,000).", lower_bound=1)
  flags.DEFINE_integer("square_noise_draws", 1, "Model calls averaged per "
                       "Square query, for a noisy model.", lower_bound=1)
  flags.DEFINE_integer("spsa_steps", 20, "SPSA optimisation steps.", lower_bound=1)
  flags.DEFINE_integer("spsa_samples", 64, "SPSA probes per step (even).",
                       lower_bound=2)
  flags.DEFINE_integer("blackbox_limit", 200, "Images the query attacks "
                       "(Square, SPSA) run on; 0: all, which puts them in the "
                       "headline.", lower_bound=0)
  flags.DEFINE_bool("sequential", False, "Run each attack only on the images "
                    "still robust after the ones before (AutoAttack's order; "
                    "the aa presets do).")
  flags.DEFINE_list("eps_sweep", ["0", "2", "4", "8", "16"], "PGD eps values "
                    "(/255; --norm=l2: multiples of --l2_eps) for the "
                    "accuracy-against-eps curve; 64/255 (L2: 8 x eps) is always "
                    "added for the sanity check.")


# Flag -> (EvalConfig field, flag value -> field value); the eps flags are
# read with the norm in config_from_flags.
_FIELDS = {
    "attacks": ("attacks", tuple), "norm": ("norm", str),
    "pgd_steps": ("steps", int), "strong_steps": ("strong_steps", int),
    "restarts": ("restarts", int), "noise_draws": ("noise_draws", int),
    "eot_samples": ("eot_samples", int), "apgd_steps": ("apgd_steps", int),
    "apgd_eot_samples": ("apgd_eot_samples", int),
    "apgd_restarts": ("apgd_restarts", int), "apgd_targets": ("apgd_targets", int),
    "square_queries": ("square_queries", int),
    "square_noise_draws": ("square_noise_draws", int),
    "spsa_steps": ("spsa_steps", int), "spsa_samples": ("spsa_samples", int),
    "blackbox_limit": ("blackbox_limit", int), "sequential": ("sequential", bool),
    "batch_size": ("batch_size", int), "seed": ("seed", int),
}


def config_from_flags():
  """flags -> a frozen, validated EvalConfig: the preset, then explicit flags."""
  overrides = {field: convert(FLAGS[flag].value)
               for flag, (field, convert) in _FIELDS.items()
               if FLAGS[flag].present}
  l2 = FLAGS.norm == "l2"
  unit = FLAGS.l2_eps if l2 else 1 / 255
  overrides["eps"] = FLAGS.l2_eps if l2 else FLAGS.eps / 255
  if FLAGS["eps_step"].present or not l2:
    overrides["step_size"] = FLAGS.eps_step * (1 if l2 else 1 / 255)
  else:
    overrides["step_size"] = FLAGS.l2_eps / 4
  try:
    overrides["eps_sweep"] = tuple(float(e) * unit for e in FLAGS.eps_sweep)
  except ValueError:
    raise config_lib.ConfigError(
        f"--eps_sweep must be numbers, got {','.join(FLAGS.eps_sweep)}")
  return config_lib.EvalConfig.from_preset(FLAGS.preset, **overrides).validate()


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
  from rsr_tf import sanity  # noqa: E402
  from rsr_tf import suite as suite_lib  # noqa: E402
  with open(paths[0]) as f:
    report = json.load(f)
  if FLAGS.model:
    # The scored model itself, to describe it on the model card: it must be
    # the file eval.json scored.
    from rsr_tf import classifiers  # noqa: E402
    if outputs.sha256_of(FLAGS.model) != report["model"]["sha256"]:
      _cli.fail(f"--rescore --model={FLAGS.model}: not the model "
                f"{paths[0]} scored (sha256 differs)")
    try:
      target = classifiers.load_classifier(FLAGS.model)
    except ValueError as e:
      _cli.fail(str(e))
    report["model"] = dict(model_record(FLAGS.model, target),
                           path=report["model"]["path"],
                           stochastic=report["model"].get("stochastic"))
  with np.load(paths[1]) as saved:
    per_example = {n: saved[n] for n in saved.files if n != "labels"}
  suite = report["suite"]
  # "worst_case" was the headline before robust accuracy (all attacks).
  for name in ("worst_case", suite_lib.HEADLINE):
    suite["results"].pop(name, None)
  entry = suite_lib.robust_all_entry(per_example, report["config"]["eps"])
  if entry:
    suite["results"][suite_lib.HEADLINE] = entry
  report["sanity_checks"] = sanity.sanity_checks(suite)
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
  from rsr_tf import classifiers  # noqa: E402
  from rsr_tf import data as data_lib  # noqa: E402
  from rsr_tf import eval_resume  # noqa: E402
  from rsr_tf import evaluation  # noqa: E402
  from rsr_tf import outputs  # noqa: E402
  from rsr_tf import plotting  # noqa: E402

  try:
    target = classifiers.load_classifier(FLAGS.model)
    source = (classifiers.load_classifier(FLAGS.source_model)
              if FLAGS.source_model else None)
    data = data_lib.load(_cli.shaped_like(data_config, target.input_shape))
  except (ValueError, data_lib.DataError) as e:
    _cli.fail(str(e))
  x = data.test.images.astype("float32") / 255.0
  y = data.test.labels
  print(f"evaluating {FLAGS.model} on {len(y)} images of {data.source}",
        file=sys.stderr, flush=True)
  settings = dataclasses.asdict(config)
  # Finished attacks wait here until the outputs are written: a broken-off
  # evaluation run again with the same command carries on.
  unfinished = os.path.join(FLAGS.output_dir, UNFINISHED)
  try:
    suite = evaluation.evaluate(target, (x, y), source=source,
                                preset=settings.pop("preset"),
                                resume_dir=unfinished, **settings)
  except eval_resume.ResumeError as e:
    _cli.fail(str(e))
  per_example = suite.pop("per_example")
  checks = suite.pop("sanity_checks")
  suite.pop("config")
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
  shutil.rmtree(unfinished)
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
