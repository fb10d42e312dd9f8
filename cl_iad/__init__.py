"""cl_iad: measure how industrial anomaly detectors forget, task after task."""

__version__ = "0.1.0"
