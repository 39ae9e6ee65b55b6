"""The ``pretrain`` stage.  ``PretrainStage`` is importable from here for code
written against the stage before it became a package."""

from .stage import PretrainStage

__all__ = ["PretrainStage"]
