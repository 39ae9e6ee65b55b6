"""The ``init`` stage (alias ``scale``): start a model by random init, from a
pretrained base, or as a layer-sliced (downscaled / depth up-scaled) copy of
one.  ``InitStage`` is importable from here for code written against the
stage before it became a package."""

from .stage import InitStage

__all__ = ["InitStage"]
