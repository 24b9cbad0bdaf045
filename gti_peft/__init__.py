"""gti-peft: Grounded Token Initialization (GTI) of new vocabulary, as a PEFT method.

Importing this package registers the method with PEFT (`get_peft_model(model, GTIConfig(...))`).
"""

from .config import INIT_METHODS, GTIConfig
from .grounding import GroundingReport, ground
from .hub import check_adapter_fits, export_for_peft, push_to_hub, save_for_hub, save_merged
from .init import description_token_ids
from .layer import NewTokenEmbedding, NewTokenLMHead
from .model import GTIModel, new_token_parameters, new_token_rows
from .peft_type import PEFT_TYPE_GTI
from .registration import register
from .tokens import add_new_tokens

register()

__version__ = "0.1.0"

__all__ = [
    "INIT_METHODS",
    "PEFT_TYPE_GTI",
    "GTIConfig",
    "GTIModel",
    "GroundingReport",
    "NewTokenEmbedding",
    "NewTokenLMHead",
    "add_new_tokens",
    "check_adapter_fits",
    "description_token_ids",
    "export_for_peft",
    "ground",
    "new_token_parameters",
    "new_token_rows",
    "push_to_hub",
    "save_for_hub",
    "save_merged",
]
