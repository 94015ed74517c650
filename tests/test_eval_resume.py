"""A broken-off evaluation carries on: finished attacks are not run again."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tf_keras as keras

from helpers import colour_data, tiny_model
from rsr_tf import eval_resume
from rsr_tf import evaluation
from rsr_tf import suite as suite_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Per-example correctness by progress label, 2 passes x 3 examples.
PLANTED = {"Clean": [[1, 1, 1], [1, 1, 0]], "FGSM": [[1, 0, 1], [1, 1, 0]],
           "PGD-2": [[1, 0, 0], [0, 1, 0]]}


def _planted_measure(monkeypatch, calls, break_at=None):
  def measure(target, x, y, draws, label, **kw):
    calls.append(label)
    if label == break_at:
      raise KeyboardInterrupt  # the session ends mid-attack
    return np.array(PLANTED.get(label, [[1, 1, 1], [1, 1, 1]]), bool)
  monkeypatch.setattr(suite_lib, "measure", measure)


def _evaluate(model, folder, **settings):
  x, y = colour_data(3)
  kw = dict(attacks=("clean", "fgsm", "pgd", "eps_sweep"), noise_draws=2,
            steps=2, batch_size=4, eps_sweep=(0.0,), resume_dir=str(folder))
  return evaluation.evaluate(model, (x, y), **{**kw, **settings})


def test_a_broken_off_evaluation_carries_on_where_it_stopped(tmp_path,
                                                             monkeypatch):
  model = tiny_model()
  calls = []
  _planted_measure(monkeypatch, calls, break_at="PGD-2")
  with pytest.raises(KeyboardInterrupt):
    _evaluate(model, tmp_path / "progress")
  assert calls == ["Clean", "FGSM", "PGD-2"]
  calls.clear()
  _planted_measure(monkeypatch, calls, break_at="PGD-2 at eps 0/255")
  with pytest.raises(KeyboardInterrupt):
    _evaluate(model, tmp_path / "progress")
  assert calls == ["PGD-2", "PGD-2 at eps 0/255"]  # clean and FGSM carried over
  calls.clear()
  _planted_measure(monkeypatch, calls)
  resumed = _evaluate(model, tmp_path / "progress")
  assert calls == ["PGD-2 at eps 0/255", "PGD-2 at eps 64/255"]
  assert resumed["resumed"] == ["clean", "fgsm", "pgd"]
  unbroken = _evaluate(model, tmp_path / "other")
  assert unbroken["resumed"] == []
  for name in ("clean", "fgsm", "pgd", "robust_all"):
    assert resumed["results"][name]["per_draw"] == unbroken["results"][name][
        "per_draw"], name
  assert resumed["results"]["robust_all"]["per_draw"] == [pytest.approx(1 / 3)] * 2
  assert [p["eps"] for p in resumed["eps_sweep"]] == [
      p["eps"] for p in unbroken["eps_sweep"]]
  np.testing.assert_array_equal(resumed["per_example"]["fgsm"], PLANTED["FGSM"])
  # A finished folder answers at once.
  calls.clear()
  assert _evaluate(model, tmp_path / "progress")["resumed"] == [
      "clean", "eps_sweep_0.00000000", "eps_sweep_0.25098039", "fgsm", "pgd"]
  assert calls == []


def test_another_model_or_other_settings_are_refused_not_mixed_in(tmp_path,
                                                                  monkeypatch):
  _planted_measure(monkeypatch, [])
  keras.utils.set_random_seed(0)
  model = tiny_model()
  _evaluate(model, tmp_path)
  with pytest.raises(eval_resume.ResumeError, match=r"\(other settings\)"):
    _evaluate(model, tmp_path, noise_draws=3)
  keras.utils.set_random_seed(1)
  with pytest.raises(eval_resume.ResumeError, match=r"\(other model\)"):
    _evaluate(tiny_model(), tmp_path)
  (tmp_path / eval_resume.IDENTITY).write_text("{half a file")
  with pytest.raises(eval_resume.ResumeError, match="is not readable"):
    _evaluate(model, tmp_path)
  (tmp_path / eval_resume.IDENTITY).unlink()
  with pytest.raises(eval_resume.ResumeError, match="without the identity.json"):
    _evaluate(model, tmp_path)
  for saved in tmp_path.glob("*.npz"):
    saved.unlink()
  _evaluate(model, tmp_path)
  x, y = colour_data(3, seed=1)
  with pytest.raises(eval_resume.ResumeError, match=r"\(other images, labels\)"):
    evaluation.evaluate(model, (x, y), attacks=("clean", "fgsm", "pgd", "eps_sweep"),
                        noise_draws=2, steps=2, batch_size=4, eps_sweep=(0.0,),
                        resume_dir=str(tmp_path))


def test_the_script_refuses_another_evaluations_folder_in_one_line(tmp_path):
  model_path = tmp_path / "m.keras"
  inputs = keras.Input((32, 32, 3))
  keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(inputs))
              ).save(str(model_path))
  folder = tmp_path / "eval" / "unfinished_attacks"
  folder.mkdir(parents=True)
  (folder / eval_resume.IDENTITY).write_text(json.dumps({"model": "other"}))
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, "scripts", "evaluate.py"),
       f"--model={model_path}", "--embedded_sample", "--eval_limit=8",
       "--attacks=clean", f"--output_dir={tmp_path / 'eval'}"],
      capture_output=True, text=True, timeout=120, cwd=ROOT)
  assert result.returncode != 0
  # The progress line "evaluating ..." comes first; then one error line.
  errors = [l for l in result.stderr.splitlines() if "error" in l.lower()]
  assert len(errors) == 1 and "unfinished evaluation of something else" in (
      errors[0]) and errors[0] == result.stderr.strip().splitlines()[-1], (
          result.stderr[-2000:])
  assert (folder / eval_resume.IDENTITY).exists()  # nothing lost
