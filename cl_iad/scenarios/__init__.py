"""Task-incremental scenarios built from datasets on disk or the synthetic generator."""

from .base import DatasetLayoutError, Experience, ImageSet, Sample, Scenario, Stream, Task, resolve_order
from .folder import from_folder, synthetic
from .streams import load_stream, parse_group, regroup

__all__ = ["DatasetLayoutError", "Experience", "ImageSet", "Sample", "Scenario", "Stream", "Task",
           "from_folder", "load_stream", "parse_group", "regroup", "resolve_order", "synthetic"]
