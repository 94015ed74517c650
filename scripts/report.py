"""Regenerate a budget's reproduction report and its plots from the collected JSON.

  python scripts/report.py --budget=cpu        # results/REPRODUCTION.md
  python scripts/report.py --budget=cpu_long   # results/REPRODUCTION_cpu_long.md

Reads results/<budget>/<variant>/{metrics.json,eval.json,per_example.npz}
(written by scripts/reproduce.py; a second seed of a variant is
<variant>_seed1) and writes the document and its figures into --results_dir.
Every number comes from those files, and the document depends on them alone:
regenerating it from the same files gives the same bytes.

The headline is robust accuracy (all attacks): an image counts in a noise
pass only if it survives every attack of the set in that pass. Two variants
are compared under the attacks both were evaluated with, recomputed from
their per_example.npz files.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from rsr_tf import reproduction  # noqa: E402
from rsr_tf import reproduction_figures  # noqa: E402
from rsr_tf import reproduction_md  # noqa: E402
from scripts import _cli  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string("budget", "cpu", "Budget folder under --results_dir.")
  flags.DEFINE_string("results_dir", "results", "Where reproduce.py collected "
                      "the JSON files; the document and plots go here too.")


def main(argv):
  if len(argv) > 1:
    _cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  if not os.path.isdir(os.path.join(FLAGS.results_dir, FLAGS.budget)):
    _cli.fail(f"no results in {os.path.join(FLAGS.results_dir, FLAGS.budget)}; "
              "run scripts/reproduce.py first")
  from rsr_tf import outputs  # noqa: E402
  name, suffix = reproduction_md.output_names(FLAGS.budget)
  # An unreadable collected file is one line and exit 2, like a bad flag.
  try:
    runs = reproduction.load_runs(FLAGS.results_dir, FLAGS.budget)
    attacks = reproduction.common_set([r for seeds in runs.values() for r in seeds])
    figures = reproduction_figures.write_figures(runs, FLAGS.results_dir, suffix,
                                                 attacks)
    text = reproduction_md.document(runs, FLAGS.results_dir, FLAGS.budget,
                                    figures)
  except reproduction.ResultsError as e:
    _cli.fail(str(e))
  path = os.path.join(FLAGS.results_dir, name)
  outputs.write_text_atomic(path, text)
  print(f"wrote {path}" + "".join(f", {f}" for f in figures))


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=_cli.parse_flags)
