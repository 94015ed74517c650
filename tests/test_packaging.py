"""pyproject.toml and requirements.txt pin the same stack."""

import os
import re
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _requirement_lines(path):
  with open(path) as f:
    lines = [line.split("#")[0].strip() for line in f]
  return {line for line in lines if line}


def test_pyproject_and_requirements_agree():
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    project = tomllib.load(f)["project"]
  declared = set(project["dependencies"]) | set(
      project["optional-dependencies"]["test"])
  assert declared == _requirement_lines(os.path.join(ROOT, "requirements.txt"))


def test_every_imported_third_party_package_is_declared():
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    declared = " ".join(tomllib.load(f)["project"]["dependencies"]).lower()
  imported = set()
  for folder in ("rsr_tf", "scripts", "export"):
    for name in os.listdir(os.path.join(ROOT, folder)):
      if name.endswith(".py"):
        with open(os.path.join(ROOT, folder, name)) as f:
          imported |= set(re.findall(r"^\s*(?:from|import) (\w+)", f.read(), re.M))
  distribution = {"tensorflow": "tensorflow", "tf_keras": "tf-keras",
                  "tensorflow_model_optimization": "tensorflow-model-optimization",
                  "tensorflow_datasets": "tensorflow-datasets", "absl": "absl-py",
                  "ai_edge_litert": "ai-edge-litert", "matplotlib": "matplotlib",
                  "PIL": "pillow", "importlib_resources": "importlib_resources"}
  for module in imported & set(distribution):
    assert distribution[module] in declared, module
  assert "art" not in imported, "ART was dropped; nothing may import it"
