"""rsr-tf: Robust Sparse Regularization (PNI + PGD training + lasso + pruning) in tf_keras."""

import os

# tfmot only works with Keras 2; this must hold before TensorFlow is imported,
# so it lives here, the first thing any rsr_tf import runs.
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
