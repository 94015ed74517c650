"""The one registry of evaluation attacks, and the presets that fix attack sets.

Each attack is named once here, with what it is (kind), how it is crafted,
its budget and the function that crafts it. Adding an attack touches this
file only: the evaluation, its config, the report and the scripts read
their lists of names from here. TensorFlow is imported only when an attack
is built, so config and report can import this module cheaply.
"""

import dataclasses
from typing import Callable

from rsr_tf import scoring

CLEAN, WHITE_BOX, QUERY, TRANSFER = ("clean", "white-box", "black-box (query)",
                                     "black-box (transfer)")
# The threat models, by name: every attack implements each of them.
NORMS = ("linf", "l2")


def check_norm(norm):
  """Raises the one-line ValueError every attack gives for an unknown norm."""
  if norm not in NORMS:
    raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")


# How adversarial images are made: not at all, again in every noise pass, or
# once (the expensive attacks; each pass is then a fresh noisy look at them).
NONE, PER_DRAW, ONCE = "none", "per draw", "once"


@dataclasses.dataclass(frozen=True)
class Context:
  """What building an attack needs: the target and the evaluation config.

  Attributes:
    model_fn: the target's [0, 1] images -> logits (noisy models draw new
      noise on every call).
    source_fn: the transfer source's logits function, or None.
    config: the `config.EvalConfig`.
    stochastic: whether the target's outputs vary between calls; EOT on a
      deterministic model takes one draw, the same attack at a fraction of
      the cost.
  """
  model_fn: Callable
  source_fn: Callable
  config: object
  stochastic: bool

  def eot(self, samples):
    return samples if self.stochastic else 1


@dataclasses.dataclass(frozen=True)
class Attack:
  """One evaluation attack.

  Attributes:
    name: its key in --attacks, eval.json and per_example.npz.
    title: its label in tables; "{steps}" is filled from the budget.
    kind: CLEAN, WHITE_BOX, QUERY or TRANSFER.
    crafted: NONE, PER_DRAW or ONCE.
    budget: ctx -> the settings recorded in its eval.json entry (steps,
      restarts, eot_samples, queries, ...).
    build: ctx -> craft(x, y) -> adversarial images. PER_DRAW crafts are
      called on one batch at a time (tensors); ONCE crafts on numpy arrays of
      every image to attack, and batch themselves.
  """
  name: str
  title: str
  kind: str
  crafted: str
  budget: Callable
  build: Callable = None

  def label(self, ctx):
    return self.title.format(**self.budget(ctx))


def _c(ctx):
  return ctx.config


def _pgd_with_restarts(model_fn, eps, step_size, steps, restarts, norm):
  """PGD with `restarts` random starts, keeping per example the worst one.

  "Worst" is judged by the model's own loss on one noisy pass, as an attacker
  with query access would; the reported accuracy comes from fresh passes.
  """
  import tensorflow as tf  # noqa: E402
  from rsr_tf import attacks  # noqa: E402

  def craft(x, y):
    best = attacks.pgd(model_fn, x, y, eps=eps, step_size=step_size,
                       steps=steps, norm=norm)
    if restarts == 1:
      return best
    labels = tf.cast(y, tf.int64)
    best_loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, model_fn(best))
    for _ in range(restarts - 1):
      candidate = attacks.pgd(model_fn, x, y, eps=eps, step_size=step_size,
                              steps=steps, norm=norm)
      loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, model_fn(candidate))
      better = loss > best_loss
      best = tf.where(better[:, None, None, None], candidate, best)
      best_loss = tf.where(better, loss, best_loss)
    return best
  return tf.function(craft, reduce_retracing=True)


def pgd_craft(ctx, steps, eps=None, step_size=None, model_fn=None, restarts=None):
  """The PGD craft of the suite (also the eps sweep's, at other budgets)."""
  c = _c(ctx)
  return _pgd_with_restarts(model_fn or ctx.model_fn, c.eps if eps is None else eps,
                            c.step_size if step_size is None else step_size,
                            steps, restarts or c.restarts, c.norm)


def _compiled(fn):
  import tensorflow as tf  # noqa: E402
  return tf.function(fn, reduce_retracing=True)


def _fgsm(ctx):
  from rsr_tf import attacks  # noqa: E402
  c = _c(ctx)
  return _compiled(lambda x, y: attacks.fgsm(ctx.model_fn, x, y, eps=c.eps,
                                             norm=c.norm))


def _mim(ctx):
  from rsr_tf import attacks  # noqa: E402
  c = _c(ctx)
  return _compiled(lambda x, y: attacks.mim(ctx.model_fn, x, y, eps=c.eps,
                                            step_size=c.step_size, steps=c.steps))


def _eot_pgd(ctx):
  from rsr_tf import attacks  # noqa: E402
  c = _c(ctx)
  samples = ctx.eot(c.eot_samples)
  step = _compiled(lambda x, y: attacks.eot_pgd(
      ctx.model_fn, x, y, eps=c.eps, step_size=c.step_size, steps=c.steps,
      eot_samples=samples, norm=c.norm))
  return batched(step, c.batch_size)


def _apgd(loss):
  def build(ctx):
    from rsr_tf import apgd  # noqa: E402
    c = _c(ctx)
    return lambda x, y: apgd.apgd(
        ctx.model_fn, x, y, c.eps, norm=c.norm, loss=loss, steps=c.apgd_steps,
        eot_samples=ctx.eot(c.apgd_eot_samples), restarts=c.apgd_restarts,
        batch_size=c.batch_size, seed=c.seed)
  return build


def _apgd_t(ctx):
  from rsr_tf import apgd  # noqa: E402
  c = _c(ctx)
  return lambda x, y: apgd.apgd_targeted(
      ctx.model_fn, x, y, c.eps, norm=c.norm, steps=c.apgd_steps,
      targets=c.apgd_targets, eot_samples=ctx.eot(c.apgd_eot_samples),
      restarts=c.apgd_restarts, batch_size=c.batch_size, seed=c.seed)


def _square(ctx):
  from rsr_tf import square  # noqa: E402
  c = _c(ctx)
  return lambda x, y: square.square(
      ctx.model_fn, x, y, c.eps, norm=c.norm, queries=c.square_queries,
      noise_draws=ctx.eot(c.square_noise_draws), batch_size=c.batch_size,
      seed=c.seed)[0]


def _transfer(ctx):
  c = _c(ctx)
  return batched(pgd_craft(ctx, c.steps, model_fn=ctx.source_fn, restarts=1),
                 c.batch_size)


def _spsa(ctx):
  from rsr_tf import attacks  # noqa: E402
  c = _c(ctx)
  model_fn = _compiled(ctx.model_fn)
  return lambda x, y: attacks.spsa(model_fn, x, y, eps=c.eps, steps=c.spsa_steps,
                                   samples=c.spsa_samples).numpy()


def batched(step, batch_size):
  """A once-craft over every image from a per-batch `step` (tensors in, out).

  A partial last batch is padded to `batch_size`, so it does not trace the
  attack's graph a second time; the padding is dropped.
  """
  import numpy as np  # noqa: E402
  import tensorflow as tf  # noqa: E402

  def craft(x, y):
    out = np.empty_like(x)
    size = min(batch_size, len(y))
    for start in range(0, len(y), size):
      xs, ys = x[start:start + size], y[start:start + size]
      pad = np.arange(size) % len(ys)
      out[start:start + size] = np.asarray(step(tf.constant(xs[pad]),
                                                tf.constant(ys[pad])))[:len(ys)]
    return out
  return craft


ATTACKS = {a.name: a for a in (
    Attack("clean", "Clean", CLEAN, NONE, lambda ctx: {}),
    Attack("fgsm", "FGSM", WHITE_BOX, PER_DRAW, lambda ctx: {"steps": 1},
           _fgsm),
    Attack("pgd", "PGD-{steps}", WHITE_BOX, PER_DRAW,
           lambda ctx: {"steps": _c(ctx).steps, "restarts": _c(ctx).restarts},
           lambda ctx: pgd_craft(ctx, _c(ctx).steps)),
    Attack("pgd_strong", "PGD-{steps}", WHITE_BOX, PER_DRAW,
           lambda ctx: {"steps": _c(ctx).strong_steps,
                        "restarts": _c(ctx).restarts},
           lambda ctx: pgd_craft(ctx, _c(ctx).strong_steps)),
    Attack("mim", "MIM-{steps}", WHITE_BOX, PER_DRAW,
           lambda ctx: {"steps": _c(ctx).steps}, _mim),
    Attack("eot_pgd", "EOT-PGD-{steps} x{eot_samples}", WHITE_BOX, ONCE,
           lambda ctx: {"steps": _c(ctx).steps,
                        "eot_samples": ctx.eot(_c(ctx).eot_samples)}, _eot_pgd),
    Attack("apgd_ce", "APGD-CE-{steps} (EOT x{eot_samples})", WHITE_BOX, ONCE,
           lambda ctx: {"steps": _c(ctx).apgd_steps,
                        "restarts": _c(ctx).apgd_restarts,
                        "eot_samples": ctx.eot(_c(ctx).apgd_eot_samples)},
           _apgd("ce")),
    Attack("apgd_dlr", "APGD-DLR-{steps} (EOT x{eot_samples})", WHITE_BOX, ONCE,
           lambda ctx: {"steps": _c(ctx).apgd_steps,
                        "restarts": _c(ctx).apgd_restarts,
                        "eot_samples": ctx.eot(_c(ctx).apgd_eot_samples)},
           _apgd("dlr")),
    Attack("apgd_t", "APGD-T-{steps} x{targets} targets (EOT x{eot_samples})",
           WHITE_BOX, ONCE,
           lambda ctx: {"steps": _c(ctx).apgd_steps,
                        "restarts": _c(ctx).apgd_restarts,
                        "targets": _c(ctx).apgd_targets,
                        "eot_samples": ctx.eot(_c(ctx).apgd_eot_samples)},
           _apgd_t),
    Attack("transfer", "transfer PGD-{steps}", TRANSFER, ONCE,
           lambda ctx: {"steps": _c(ctx).steps, "restarts": 1}, _transfer),
    Attack("square", "Square-{queries} (x{eot_samples} draws per query)", QUERY,
           ONCE, lambda ctx: {"queries": _c(ctx).square_queries,
                              "eot_samples": ctx.eot(_c(ctx).square_noise_draws)},
           _square),
    Attack("spsa", "SPSA-{steps}", QUERY, ONCE,
           lambda ctx: {"steps": _c(ctx).spsa_steps,
                        "spsa_samples": _c(ctx).spsa_samples}, _spsa),
)}
# Not an attack: PGD at several eps, for the curve and two sanity checks.
EPS_SWEEP = "eps_sweep"
NAMES = tuple(ATTACKS) + (EPS_SWEEP,)
HEADLINE = scoring.HEADLINE

# Each preset fixes an attack set (on a noisy model every extra attack is one
# more noise draw, so models are compared under one preset) and the budgets
# that differ from EvalConfig's defaults.
PRESETS = {
    # Cheap and broad, for 2 cores: every attack on every image, so each has
    # its own row and the sanity checks can compare them; Square on
    # --blackbox_limit images checks that gradients are not masked.
    "cpu": {"attacks": ("clean", "fgsm", "pgd", "pgd_strong", "eot_pgd",
                        "apgd_ce", "apgd_dlr", "transfer", "square", EPS_SWEEP),
            "sequential": False},
    # AutoAttack's version for randomized defenses.
    "aa_rand": {"attacks": ("clean", "apgd_ce", "apgd_dlr"), "apgd_steps": 100,
                "apgd_eot_samples": 20, "apgd_restarts": 1, "sequential": True,
                "blackbox_limit": 0},
    # AutoAttack's standard version, for deterministic models (FAB-T left out).
    "aa_standard": {"attacks": ("clean", "apgd_ce", "apgd_t", "square"),
                    "apgd_steps": 100, "apgd_eot_samples": 1,
                    "apgd_restarts": 1, "apgd_targets": 9,
                    "square_queries": 5000, "square_noise_draws": 1,
                    "sequential": True, "blackbox_limit": 0},
}
