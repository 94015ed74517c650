"""A model card beside each evaluation: what a leaderboard entry needs, as JSON and Markdown.

Built from eval.json alone (`card(report)`), so `evaluate.py --rescore`
rebuilds it with the numbers it re-derived. TensorFlow-free.
"""

import gzip
import os

from rsr_tf.scoring import HEADLINE


def file_sizes(path):
  """{"bytes", "gzip_bytes"} of a model file, or of a directory's files."""
  files = [path] if os.path.isfile(path) else sorted(
      os.path.join(root, name) for root, _, names in os.walk(path) for name in names)
  raw = b"".join(open(name, "rb").read() for name in files)
  return {"bytes": len(raw), "gzip_bytes": len(gzip.compress(raw, 9, mtime=0))}


def describe_keras(model):
  """The architecture part of a card: name, parameters, layers, sparsity."""
  from rsr_tf import pruning  # noqa: E402  (TensorFlow only when asked)
  layers = {}
  for layer in model.layers:
    kind = type(layer).__name__
    layers[kind] = layers.get(kind, 0) + 1
  return {"architecture": model.name, "parameters": int(model.count_params()),
          "layers": layers,
          "sparsity": pruning.measured_sparsity(model)["overall"]}


def _accuracy(entry):
  return None if entry is None else {
      "mean": entry["mean"], "std": entry["std"],
      "examples": entry["examples"], "passes": entry.get("draws")}


def card(report):
  """The model card of one evaluation, from its eval.json content."""
  suite, config = report["suite"], report["config"]
  results = suite["results"]
  headline = results.get(HEADLINE)
  attacks = []
  for name in (headline or {}).get("attacks", []):
    if name == "clean":
      continue
    entry = results[name]
    attacks.append({"attack": name, "kind": entry["kind"],
                    "steps": entry.get("steps"),
                    "queries": entry.get("queries"),
                    "restarts": entry.get("restarts"),
                    "eot_samples": entry.get("eot_samples"),
                    "crafted": entry.get("crafted"),
                    "accuracy": _accuracy(entry)})
  model = report["model"]
  return {
      "model": {key: model.get(key) for key in (
          "path", "sha256", "format", "architecture", "parameters", "layers",
          "sparsity", "bytes", "gzip_bytes")},
      "dataset": {"source": report["data"]["source"],
                  "eval_examples": report["data"]["eval_examples"],
                  "input_shape": model.get("input_shape"),
                  "num_classes": model.get("num_classes")},
      "threat_model": {"norm": config.get("norm", "linf"), "eps": config["eps"],
                       "eps_255": round(config["eps"] * 255, 3)},
      "randomized": bool(suite["stochastic"]),
      # Sequential presets attack only the survivors of the attacks before,
      # so each row is the accuracy after it and those, not on its own.
      "sequential": bool(config.get("sequential", False)),
      "noise_passes": config["noise_draws"],
      "clean_accuracy": _accuracy(results.get("clean")),
      "robust_accuracy_all_attacks": _accuracy(headline),
      "attacks": attacks,
      "sanity_checks": {c["check"]: c["status"] for c in report["sanity_checks"]},
      "provenance": report["provenance"],
  }


def _pct(entry):
  if entry is None:
    return "not measured"
  return (f"{100 * entry['mean']:.2f}% ± {100 * entry['std']:.2f} "
          f"({entry['examples']:,} images x {entry['passes']} passes)")


def _size(n):
  return "—" if n is None else f"{n / 1024:,.1f} KiB"


def markdown(card_):
  """MODEL_CARD.md: the card for people."""
  m, d, t = card_["model"], card_["dataset"], card_["threat_model"]
  sparsity = "—" if m.get("sparsity") is None else f"{100 * m['sparsity']:.1f}%"
  eps = f"{t['eps_255']:g}/255" if t["norm"] == "linf" else f"{t['eps']:g}"
  lines = [
      f"# Model card: `{os.path.basename(str(m['path']))}`", "",
      "| | |", "|---|---|",
      f"| architecture | {m.get('architecture') or '—'} |",
      f"| parameters | {m['parameters']:,} |" if m.get("parameters") is not None
      else "| parameters | — |",
      f"| sparsity of the conv/dense kernels | {sparsity} |",
      f"| file size (gzip) | {_size(m.get('bytes'))} ({_size(m.get('gzip_bytes'))}) |",
      f"| sha256 | `{m['sha256']}` |",
      f"| dataset | {d['source']}, {d['eval_examples']:,} held-out images |",
      f"| input, classes | {d['input_shape']}, {d['num_classes']} |",
      f"| threat model | {t['norm'].upper().replace('LINF', 'L-inf')}, eps {eps} |",
      f"| randomized | {'yes: weight noise at inference' if card_['randomized'] else 'no'}"
      f"; every accuracy over {card_['noise_passes']} passes |",
      f"| clean accuracy | {_pct(card_['clean_accuracy'])} |",
      f"| **robust accuracy (all attacks)** | **{_pct(card_['robust_accuracy_all_attacks'])}** |",
      "", "## Attacks in the headline", "",
      "An image is robust in a pass only if it survives every attack below in "
      "that pass.", "",
      "| attack | kind | steps (queries) | restarts | EOT | crafted | "
      + ("accuracy after it and those above |" if card_.get("sequential")
         else "accuracy alone |"),
      "|---|---|---|---|---|---|---|"]
  for a in card_["attacks"]:
    budget = a["steps"] or (f"({a['queries']:,})" if a.get("queries") else "—")
    lines.append(f"| {a['attack']} | {a['kind']} | {budget} | "
                 f"{a['restarts'] or '—'} | {a['eot_samples'] or '—'} | "
                 f"{a['crafted']} | {_pct(a['accuracy'])} |")
  statuses = list(card_["sanity_checks"].values())
  failed = [c for c, s in card_["sanity_checks"].items() if s == "FAIL"]
  skipped = statuses.count("SKIPPED")
  run = len(statuses) - skipped
  # A preset that runs none of the attacks a check compares skips it; that
  # is not a failure, but it is not a pass either, so the count says so.
  lines += ["", "## Sanity checks", "",
            f"{statuses.count('PASS')} of {run} run passed"
            + (f", {skipped} skipped (their attacks are not in this "
               f"evaluation's set)" if skipped else "")
            + (f"; FAILED: {'; '.join(failed)}." if failed else ".")]
  p = card_["provenance"]
  lines += ["", "## Provenance", "", f"    {p['command']}", "",
            f"git commit {p['git_commit']}, {p['date']}."]
  return "\n".join(lines) + "\n"
