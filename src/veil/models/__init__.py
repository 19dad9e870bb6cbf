"""Model families veil can split, and their registry."""

from veil.models.registry import ModelSpec, create_model, get_spec, list_models, split_model

__all__ = ["ModelSpec", "create_model", "get_spec", "list_models", "split_model"]
