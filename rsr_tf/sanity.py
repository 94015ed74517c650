"""Carlini et al. (2019)'s sanity checks of an evaluation, each of which can fail.

Every check compares entries of one suite result (rsr_tf.suite.run_suite),
within the noise (`scoring.tolerance`). Numpy-free: it reads the entries.
"""

import math

from rsr_tf import scoring

STRONG_EPS = 64 / 255  # where L-inf PGD must bring any model to (almost) zero
STRONG_ACCURACY = 0.05


def sanity_checks(suite):
  """Each check is PASS, FAIL or SKIPPED (with what was not run).

  Args:
    suite: {"results", "eps_sweep", ...} as `run_suite` returns it.

  Returns:
    A list of {"check", "status", "detail"} dicts.
  """
  r = suite["results"]
  sweep = suite["eps_sweep"]
  checks = []

  def add(check, needed, ok_fn, detail_fn):
    missing = [n for n in needed if n not in r and n != "sweep"]
    if missing or ("sweep" in needed and not sweep):
      checks.append({"check": check, "status": "SKIPPED",
                     "detail": f"not run: {', '.join(missing) or 'eps_sweep'}"})
      return
    ok = ok_fn()
    checks.append({"check": check, "status": "PASS" if ok else "FAIL",
                   "detail": detail_fn()})

  def pct(entry):
    return f"{100 * entry['mean']:.2f}% ± {100 * entry['std']:.2f}"

  def at(eps):
    return next((p for p in sweep if math.isclose(p["eps"], eps)), None)

  def no_better(a, b):  # a's accuracy is not above b's beyond the noise
    return r[a]["mean"] <= r[b]["mean"] + scoring.tolerance(r[a], r[b])

  zero = at(0.0)
  add("eps = 0 reproduces clean accuracy", ["clean", "sweep"],
      lambda: zero is not None and abs(zero["mean"] - r["clean"]["mean"])
      <= scoring.tolerance(zero, r["clean"]),
      lambda: "eps 0 not in the sweep" if zero is None else
      f"eps 0: {pct(zero)} vs clean {pct(r['clean'])}")
  add("accuracy does not rise as eps grows", ["sweep"],
      lambda: all(b["mean"] <= a["mean"] + scoring.tolerance(a, b)
                  for a, b in zip(sweep, sweep[1:])),
      lambda: ", ".join(f"{p['eps'] * 255:g}/255: {100 * p['mean']:.1f}%"
                        for p in sweep))
  strong = max(sweep, key=lambda p: p["eps"]) if sweep else None
  add(f"PGD at the largest eps of the sweep brings accuracy to <= "
      f"{100 * STRONG_ACCURACY:g}%", ["sweep"],
      lambda: strong["mean"] <= STRONG_ACCURACY,
      lambda: f"eps {strong['eps'] * 255:g}/255: {pct(strong)}")
  add("more PGD steps never help the model (PGD-strong <= PGD)",
      ["pgd", "pgd_strong"], lambda: no_better("pgd_strong", "pgd"),
      lambda: f"PGD-{r['pgd_strong']['steps']} {pct(r['pgd_strong'])} vs "
      f"PGD-{r['pgd']['steps']} {pct(r['pgd'])}")
  add("iterative beats single-step (PGD <= FGSM)", ["pgd", "fgsm"],
      lambda: no_better("pgd", "fgsm"),
      lambda: f"PGD {pct(r['pgd'])} vs FGSM {pct(r['fgsm'])}")
  add("black-box transfer is weaker than white-box (transfer >= PGD)",
      ["transfer", "pgd"], lambda: no_better("pgd", "transfer"),
      lambda: f"transfer {pct(r['transfer'])} vs PGD {pct(r['pgd'])}")
  # PGD on the images Square attacked (all of them when it ran on the set).
  pgd_there = r.get("pgd", {}).get("on_blackbox_subset", r.get("pgd"))
  add("black-box queries are weaker than white-box (Square >= PGD, same images)",
      ["square", "pgd"],
      lambda: pgd_there["mean"] <= r["square"]["mean"] + scoring.tolerance(
          r["square"], pgd_there),
      lambda: f"Square {pct(r['square'])} vs PGD on the same "
      f"{r['square']['examples']} images {pct(pgd_there)}")
  add("EOT does not help the model (EOT-PGD <= PGD)", ["eot_pgd", "pgd"],
      lambda: no_better("eot_pgd", "pgd"),
      lambda: f"EOT-PGD {pct(r['eot_pgd'])} vs PGD {pct(r['pgd'])}")
  add("APGD with EOT is at least as strong as PGD (APGD-CE <= PGD)",
      ["apgd_ce", "pgd"], lambda: no_better("apgd_ce", "pgd"),
      lambda: f"APGD-CE {pct(r['apgd_ce'])} vs PGD {pct(r['pgd'])}")
  return checks
