"""Loading image classification data (any size, 1 or 3 channels) into memory.

The one module callers import: `load` picks the source a `DataConfig`
selects, and every public name of the modules below is re-exported here, so
`data.X` keeps working wherever X is defined:

  dataset.py          Split, Dataset, DataError, channel_stats, fingerprint
  subsets.py          balanced_subset, hold_out
  image_decode.py     decoding and conforming images (CHANNEL_CHOICES, ...)
  image_folder.py     load_image_folder
  tfds_source.py      load_tfds
  embedded_sample.py  load_embedded_sample
"""

from rsr_tf.dataset import DataError, Dataset, Split, channel_stats, fingerprint
from rsr_tf.embedded_sample import EMBEDDED_SAMPLE_PATH, load_embedded_sample
from rsr_tf.image_decode import CHANNEL_CHOICES, DEFAULT_CHANNELS
from rsr_tf.image_folder import IMAGE_EXTENSIONS, load_image_folder
from rsr_tf.subsets import balanced_subset, hold_out
from rsr_tf.tfds_source import load_tfds

__all__ = [
    "CHANNEL_CHOICES", "DEFAULT_CHANNELS", "EMBEDDED_SAMPLE_PATH",
    "IMAGE_EXTENSIONS", "DataError", "Dataset", "Split", "balanced_subset",
    "channel_stats", "fingerprint", "hold_out", "load", "load_embedded_sample",
    "load_image_folder", "load_tfds",
]


def load(config) -> Dataset:
  """Loads the data source that `config` selects.

  Args:
    config: An `rsr_tf.config.DataConfig`. `image_folder` wins if set, then
      `embedded_sample`, else the tfds dataset `dataset` in `data_dir`.

  Returns:
    The Dataset, cut to `train_limit`/`eval_limit` examples (0 means all)
    with `balanced_subset`, its images `config.image_size` (None: as
    stored, one size for all) with `config.channels` channels (None: the
    source's own, see each loader).

  Raises:
    DataError: The data is missing, malformed or cannot be downloaded.
  """
  size, channels = config.image_size, config.channels
  if config.image_folder:
    data = load_image_folder(config.image_folder, config.train_limit,
                             config.eval_limit, config.skip_bad_images,
                             image_size=size, channels=channels)
  elif config.embedded_sample:
    data = load_embedded_sample(config.train_limit, config.eval_limit,
                                image_size=size, channels=channels)
  else:
    data = load_tfds(config.dataset, config.data_dir, config.train_limit,
                     config.eval_limit, image_size=size, channels=channels)
  return hold_out(data, config.validation_size) if config.validation_size else data
