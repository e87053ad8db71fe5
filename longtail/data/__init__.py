"""Long-tailed datasets, shot groups, transforms and samplers.

* ``build_datasets(cfg_data)`` -> :class:`DataBundle` (train / val / test, counts, names).
* ``train_class_counts(cfg_data)`` -> the training counts (from the builder's count profile when it has one).
* ``build_sampler(name, targets, num_classes, ...)`` -> a ``torch.utils.data.Sampler``.
* ``shot_groups(class_counts, many=100, few=20)`` -> many / medium / few class masks.

The registry :data:`DATASETS` lives in :mod:`.lt`; the dataset modules below import it and
register their builders on import, so importing this package (which any import of a submodule
does first) registers every dataset. ``lt`` itself imports none of them: no import cycle.
"""
from .lt import (DATASETS, DataBundle, build_datasets, counts_profile, long_tail_counts,  # noqa: F401
                 shot_groups, train_class_counts)
from .samplers import SAMPLERS, build_sampler  # noqa: F401
from .transforms import build_transforms  # noqa: F401
from . import cifar, folder, listfile, synthetic  # noqa: F401  (register their builders)
