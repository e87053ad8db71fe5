"""Long-tailed datasets, shot groups, transforms and samplers.

* ``build_datasets(cfg_data)`` -> :class:`DataBundle` (train / val / test, counts, names).
* ``build_sampler(name, targets, num_classes, ...)`` -> a ``torch.utils.data.Sampler``.
* ``shot_groups(class_counts, many=100, few=20)`` -> many / medium / few class masks.
"""
from .lt import DataBundle, build_datasets, DATASETS, long_tail_counts, shot_groups  # noqa: F401
from .samplers import SAMPLERS, build_sampler  # noqa: F401
from .transforms import build_transforms  # noqa: F401
