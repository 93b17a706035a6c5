"""transformers internals mergeopt relies on, and nothing else touches: which attention kernel a
config selected, the layers of a DynamicCache, and the parameters a model declares may stay
unloaded. tests/test_adapters.py passes on transformers 5.25.0; the same symbols are in the sources
of 4.56.2, 4.57.6, 5.0.0 and 5.10.4 (4.56 is also the first with from_pretrained(dtype=), which
resident.py passes); pyproject pins that range."""

from __future__ import annotations


def attention_implementation(config) -> str | None:
    """The attention kernel a model config runs ("eager", "sdpa", "flash_attention_2"...).
    Relies on: ``PretrainedConfig._attn_implementation``."""
    return getattr(config, "_attn_implementation", None)


def full_attention_layers(cache) -> list[tuple] | None:
    """(keys, values) per layer of a plain DynamicCache of full-attention layers, else None (a
    sliding or quantized cache, another cache class, a layer not filled).
    Relies on: ``transformers.cache_utils.DynamicLayer`` and ``DynamicCache.layers`` (each with
    ``keys`` and ``values``)."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    layers = getattr(cache, "layers", None)
    if type(cache) is not DynamicCache or not layers or any(
            type(layer) is not DynamicLayer or getattr(layer, "keys", None) is None for layer in layers):
        return None
    return [(layer.keys, layer.values) for layer in layers]


def dynamic_cache(layers: list[tuple]):
    """A DynamicCache holding these (keys, values) per layer.
    Relies on: ``DynamicCache(ddp_cache_data=)``."""
    from transformers.cache_utils import DynamicCache

    return DynamicCache(ddp_cache_data=layers)


def ignored_missing_keys(model) -> list[str]:
    """Patterns of the parameters a model class lets stay missing from its files (transformers
    initializes them itself). Relies on: ``PreTrainedModel._keys_to_ignore_on_load_missing``."""
    return list(getattr(model, "_keys_to_ignore_on_load_missing", None) or ())
