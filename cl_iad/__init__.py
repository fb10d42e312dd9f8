"""cl_iad: measure how industrial anomaly detectors forget, task after task."""

import warnings as _warnings

__version__ = "0.1.0"

# Importing anomalib's models makes timm and anomalib warn about their *own* internal imports
# (``timm.models.layers``, anomalib's ``dinov2`` package): nothing a user of cl_iad can act on, and
# printed on every run. These filters match only deprecation notices attributed to those two
# packages' modules, so warnings about the user's own code, and every other warning, still show.
for _category in (DeprecationWarning, FutureWarning):
    _warnings.filterwarnings("ignore", category=_category, module=r"(timm|anomalib)(\.|$)")
del _category
