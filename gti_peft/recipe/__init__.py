"""The GTI recipe for generative recommendation: semantic IDs -> ground -> fine-tune -> evaluate -> save."""

from .config import RecipeConfig, load_recipe_config
from .pipeline import run_recipe

__all__ = ["RecipeConfig", "load_recipe_config", "run_recipe"]
