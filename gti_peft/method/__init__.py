"""The GTI PEFT method: `GTIConfig`, the new-token layers, the tuner and the starting rows.

Importing it registers GTI with PEFT (as PEFT's own tuners register in their `__init__`), so
`peft.get_peft_model(model, GTIConfig(...))` and `PeftModel.from_pretrained` know the method. It imports nothing
from the other layers of gti-peft.
"""

from .config import INIT_METHODS, GTIConfig
from .init import description_token_ids
from .layer import NewTokenEmbedding, NewTokenLayer, NewTokenLMHead
from .model import GTIModel, new_token_parameters, new_token_rows
from .peft_type import PEFT_TYPE_GTI
from .registration import register
from .tokens import add_new_tokens, check_tokenizer_fits

register()

__all__ = [
    "INIT_METHODS",
    "PEFT_TYPE_GTI",
    "GTIConfig",
    "GTIModel",
    "NewTokenEmbedding",
    "NewTokenLMHead",
    "NewTokenLayer",
    "add_new_tokens",
    "check_tokenizer_fits",
    "description_token_ids",
    "new_token_parameters",
    "new_token_rows",
    "register",
]
