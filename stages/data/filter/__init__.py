"""The ``filter`` stage and the API a filter plugin is written against::

from recipe_runner_stages.data.filter import DocumentFilter, FilterDecision, FilterOptions
"""

from .base import DocumentFilter, FilterDecision, FilterOptions

__all__ = ["DocumentFilter", "FilterDecision", "FilterOptions"]
