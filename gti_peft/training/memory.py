"""A model of peak training memory for GTI (LoRA + new rows), checked against measured peaks.

The base's weights are sized by accelerate (`compute_module_sizes` on an empty model built from the config);
the rest is counted per parameter (LoRA, new rows, gradients, optimizer states) and per token (activations that
autograd keeps, logits at answer positions only). `benchmarks/memory.py --validate` compares it with CPU peaks.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field

import torch

GB = 1e9
OPTIMIZER_BYTES = {"adamw": 8, "paged_adamw": 8, "adamw_8bit": 2, "paged_adamw_8bit": 2, "sgd": 0}
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_NF4_STATE_BYTES = {True: 1 / 64 + 4 / (64 * 256), False: 4 / 64}  # absmax per 64-block (double quant: 8-bit)


@dataclass
class MemoryEstimate:
    """Predicted peak memory of training, by part (bytes)."""

    weights: int = field(metadata={"help": "Base weights as held during training, new rows included."})
    trainable: int = field(metadata={"help": "LoRA and new-row parameters (float32)."})
    gradients: int = field(metadata={"help": "Their gradients (float32)."})
    optimizer: int = field(metadata={"help": "Optimizer states of the trainable parameters."})
    activations: int = field(metadata={"help": "Tensors autograd keeps for the backward pass, all layers."})
    logits: int = field(metadata={"help": "Logits at answer positions, their float32 copy and gradients."})
    settings: dict = field(default_factory=dict, metadata={"help": "The inputs the estimate was made for."})

    @property
    def total(self) -> int:
        return self.weights + self.trainable + self.gradients + self.optimizer + self.activations + self.logits

    def breakdown(self) -> dict[str, int]:
        names = ("weights", "trainable", "gradients", "optimizer", "activations", "logits")
        return {name: getattr(self, name) for name in names} | {"total": self.total}

    def format(self) -> str:
        """One line per part, in GB."""
        return "\n".join(f"{name:<12}{size / GB:8.2f} GB" for name, size in self.breakdown().items())


def _empty_model(config):
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        return AutoModelForCausalLM.from_config(config)


def _targets(target_modules: str | list[str]) -> tuple[str, ...]:
    return ALL_LINEAR if target_modules == "all-linear" else tuple(target_modules)


def weight_bytes(
    config, n_new_tokens: int = 0, dtype: str | torch.dtype = "bfloat16", load_in_4bit: bool = False,
    double_quant: bool = True, upcast_non_quantized: bool = True,
) -> int:  # fmt: skip
    """Bytes of the base as loaded for training, with `n_new_tokens` rows added to the embedding (and head).

    4-bit: every decoder `nn.Linear` in NF4 plus its quantization state; the other weights in float32 when
    `upcast_non_quantized` (what `prepare_model_for_kbit_training` does), else in `dtype`.
    """
    from accelerate.utils import CustomDtype, compute_module_sizes

    config = copy.deepcopy(config)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    text.vocab_size += n_new_tokens
    model = _empty_model(config)
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if not load_in_4bit:
        return int(compute_module_sizes(model, dtype=dtype)[""])
    head = model.get_output_embeddings()
    quantized = [
        f"{name}.weight"
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not head
    ]
    rest_dtype = torch.float32 if upcast_non_quantized else dtype
    sizes = compute_module_sizes(model, dtype=rest_dtype, special_dtypes=dict.fromkeys(quantized, CustomDtype.INT4))
    n_quantized = sum(model.get_parameter(name).numel() for name in quantized)
    return int(sizes[""] + n_quantized * _NF4_STATE_BYTES[double_quant])


def trainable_parameters(config, n_new_tokens: int, lora_r: int, target_modules: str | list[str]) -> int:
    """LoRA parameters (r x (in + out) per targeted linear) plus the new rows (twice for an untied head)."""
    model = _empty_model(config)
    targets = _targets(target_modules)
    lora = sum(
        lora_r * (module.in_features + module.out_features)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets
    )
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    tied = getattr(text, "tie_word_embeddings", False)
    return lora + n_new_tokens * text.hidden_size * (1 if tied else 2)


def activation_elements_per_token(config, lora_r: int, lora_dropout: float, half_precision: bool) -> dict:
    """Elements autograd keeps per token: `layer` for one decoder layer, `outside` for the rest.

    A decoder layer with LoRA on its seven projections keeps both norm inputs (float32 when the model is in half
    precision), both normed outputs, the attention's inputs and output (q, k and v counted at the query width: the
    surplus over grouped-query sizes stands for the attention's backward workspace), the output projection's
    input, gate, its SiLU, up and their product, and each LoRA A output; with dropout, a dropped-out copy (and a
    one-byte mask) of each projection input. Checked against measured peaks by `benchmarks/memory.py --validate`.
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    h, inter = text.hidden_size, text.intermediate_size
    heads = text.num_attention_heads
    q = heads * (getattr(text, "head_dim", None) or h // heads)
    norm_inputs = 2 * h * (2 if half_precision else 1)  # float32 copies count double in a half-precision model
    layer = norm_inputs + 2 * h + 3 * q + q + h + 4 * inter + 7 * lora_r
    if lora_dropout > 0:
        dropped = 6 * h + inter
        layer += dropped + dropped / (2 if half_precision else 4)  # bool masks: one byte per element
    outside = 3 * h  # embedding output, final norm input and output
    return {"layer": layer, "outside": outside}


def estimate_training_memory(
    config,
    *,
    n_new_tokens: int,
    batch_size: int,
    seq_len: int,
    answer_tokens: int | None = None,
    dtype: str | torch.dtype = "bfloat16",
    load_in_4bit: bool = False,
    upcast_non_quantized: bool = True,
    lora_r: int = 8,
    lora_dropout: float = 0.0,
    target_modules: str | list[str] = "all-linear",
    optimizer: str = "adamw",
    gradient_checkpointing: bool = False,
) -> MemoryEstimate:
    """Predict the peak memory of a GTI training step on one device.

    Args:
        config: the base's `PretrainedConfig` (`AutoConfig.from_pretrained`; no weights are loaded).
        n_new_tokens: rows added for new tokens.
        batch_size: sequences per device step (gradient accumulation does not add to the peak).
        seq_len: padded sequence length.
        answer_tokens: positions per batch that carry a label (logits are computed there only); default all.
        dtype: the weights' dtype (compute dtype of a 4-bit base).
        load_in_4bit: NF4 base with double quantization.
        upcast_non_quantized: 4-bit only: the other weights (embeddings, head, norms) in float32, as
            `prepare_model_for_kbit_training` (and so the recipe) leaves them.
        lora_r, lora_dropout, target_modules: the LoRA settings.
        optimizer: one of `OPTIMIZER_BYTES` (AdamW keeps two float32 states; 8-bit and paged 8-bit two bytes).
        gradient_checkpointing: keep only each layer's input, recompute one layer at a time.
    """
    if optimizer not in OPTIMIZER_BYTES:
        raise ValueError(f"`optimizer`={optimizer!r} is not modelled; choose one of {sorted(OPTIMIZER_BYTES)}.")
    if min(batch_size, seq_len) < 1 or n_new_tokens < 0:
        raise ValueError(
            f"`batch_size` ({batch_size}) and `seq_len` ({seq_len}) must be >= 1 and `n_new_tokens` "
            f"({n_new_tokens}) >= 0."
        )
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    half = dtype in (torch.float16, torch.bfloat16)
    act_bytes = 2 if half else 4
    tokens = batch_size * seq_len
    per_token = activation_elements_per_token(config, lora_r, lora_dropout, half)
    layers = text.num_hidden_layers
    if gradient_checkpointing:  # layer inputs of every layer, plus one layer recomputed during backward
        elements = tokens * (layers * text.hidden_size + per_token["layer"] + per_token["outside"])
    else:
        elements = tokens * (layers * per_token["layer"] + per_token["outside"])
    positions = min(seq_len, answer_tokens) if answer_tokens is not None else seq_len
    vocab = text.vocab_size + n_new_tokens
    # logits in the model's dtype, their float32 copy, log-softmax output and the gradient during backward
    logits = batch_size * positions * vocab * (act_bytes + 3 * 4)
    params = trainable_parameters(config, n_new_tokens, lora_r, target_modules)
    settings = {
        "n_new_tokens": n_new_tokens, "batch_size": batch_size, "seq_len": seq_len, "answer_tokens": positions,
        "dtype": str(dtype).removeprefix("torch."), "load_in_4bit": load_in_4bit, "lora_r": lora_r,
        "lora_dropout": lora_dropout, "optimizer": optimizer, "gradient_checkpointing": gradient_checkpointing,
    }  # fmt: skip
    return MemoryEstimate(
        weights=weight_bytes(config, n_new_tokens, dtype, load_in_4bit, upcast_non_quantized=upcast_non_quantized),
        trainable=params * 4,
        gradients=params * 4,
        optimizer=params * OPTIMIZER_BYTES[optimizer],
        activations=int(elements * act_bytes),
        logits=int(logits),
        settings=settings,
    )


def device_memory(device: str | torch.device | None = None) -> tuple[str, int] | None:
    """`(device name, bytes available)` for a CUDA device or the CPU's RAM; None (with a warning) if unknown."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    try:
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            return f"{torch.cuda.get_device_name(device)} ({device})", int(free)
        if device.type == "cpu":
            import psutil

            return "cpu", int(psutil.virtual_memory().available)
        raise RuntimeError(f"no memory query for device type {device.type!r}")
    except Exception as error:  # noqa: BLE001  (any failure to query must not stop training)
        warnings.warn(
            f"Could not query the free memory of {device} ({error}): the memory check is skipped.", stacklevel=2
        )
        return None
