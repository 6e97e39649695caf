"""What each graph tensor is for: the roles the runtime asks a manifest for.

A role names a tensor's job (the decoder's token ids, layer 3's past keys); the manifest's
``GraphInfo.roles`` maps it to the tensor's name in that folder's graph. This project's exporter names
tensors after their roles; a folder written by another exporter gets its own map. Roles are
the contract, so they are spelled here once, and ``required`` says which ones each graph must have.
"""

from __future__ import annotations

# text encoder
TEXT_IDS = "input_ids"
TEXT_MASK = "attention_mask"
CHROMA = "chroma"  # melody models: one-hot chroma [rows, frames, 12], projected and tiled into the prefix
PREFIX = "encoder_hidden_states"  # melody models: the whole prefix [chroma; text] the decoder prepends
TEXT_STATES = "text_states"  # "states" folders (optimum): the raw T5 states; the decoder projects them itself
# decoder
TOKEN_IDS = "input_ids"
PREFIX_EMBEDS = "prefix_embeds"  # melody models: the prefix on the first call, empty afterwards
ENCODER_MASK = "encoder_attention_mask"  # text-only models: which text positions cross-attention sees
PAST_LENGTH = "past_length"  # older static folders: how many positions of the buffers are filled
# static folders with manifest step_inputs "positions": the step's values computed by the runtime, not by
# the graph from the past length (so no host computation sits inside the step; see export/wrappers.py)
POSITION_IDS = "position_ids"  # [rows, new] int64: the positions of the new columns (prefix included)
SEQLENS_K = "seqlens_k"  # [rows] int32: filled positions after this call, minus 1 (GroupQueryAttention's)
TOTAL_LENGTH = "total_sequence_length"  # [] int32: GroupQueryAttention's host input
STEP_INPUTS = [POSITION_IDS, SEQLENS_K, TOTAL_LENGTH]
LOGITS = "logits"  # [rows, codebooks, vocab], last position only
USE_CACHE_BRANCH = "use_cache_branch"  # optimum's merged decoder: False on the first call, True afterwards
# codec
AUDIO_CODES = "audio_codes"
AUDIO_VALUES = "audio_values"
# stems (HTDemucs without its STFT): the normalised segments and their normalised spectrograms in,
# both branches' raw outputs out (runtime/stems.py does the STFT, the mask, the iSTFT and the sum)
STEMS_WAVE = "waveform"  # [segments, channels, segment_length]
STEMS_SPEC = "spectrogram"  # [segments, 2 * channels, n_fft // 2, frames]: real, imaginary per channel
STEMS_TIME = "time_stems"  # [segments, sources * channels, segment_length]
STEMS_FREQ = "spec_stems"  # [segments, sources * 2 * channels, n_fft // 2, frames]
# graphs with those tensors: the exact fp32 one, and the melody path's int8 one made from it (export/stems_fast.py)
STEMS_GRAPHS = ("stems", "stems_fast")


def layers(kind: str, num_layers: int) -> list[str]:
    """Per-layer key/value roles in graph order: ``past`` / ``present`` (decoder cache), ``cross``
    (text-only models: cross-attention keys/values the text encoder computes once per generation),
    ``past_cross`` / ``present_cross`` ("states" folders: the decoder computes the cross-attention keys/values
    on its first call and takes them back as a past on every later call)."""
    return [f"{kind}.{i}.{which}" for i in range(num_layers) for which in ("key", "value")]


def required(graph: str, conditioning: str, kv_cache: str, num_layers: int,
             step_inputs: str = "past_length") -> tuple[list[str], list[str]]:
    """``(input roles, output roles)`` a graph must map for the runtime to drive it; ``step_inputs`` is the
    manifest's (static cache: ``past_length`` or ``positions``)."""
    prefix = conditioning == "prefix"
    if conditioning == "states":  # optimum / transformers.js layout (optimum_layout.py); concat cache only
        past, present = layers("past", num_layers), layers("present", num_layers)
        cross = layers("past_cross", num_layers)
        if graph == "text_encoder":
            return [TEXT_IDS, TEXT_MASK], [TEXT_STATES]
        if graph == "decoder":  # the first call's graph (optimum's decoder_model, or the merged one)
            return [TOKEN_IDS, TEXT_STATES, ENCODER_MASK], [LOGITS, *present, *layers("present_cross", num_layers)]
        if graph == "decoder_with_past":
            return [TOKEN_IDS, ENCODER_MASK, *past, *cross], [LOGITS, *present]
    if graph == "text_encoder":
        if prefix:
            return [TEXT_IDS, TEXT_MASK, CHROMA], [PREFIX]
        return [TEXT_IDS, TEXT_MASK], layers("cross", num_layers)
    if graph == "decoder":
        conditioning_inputs = [PREFIX_EMBEDS] if prefix else [ENCODER_MASK, *layers("cross", num_layers)]
        cache = ([PAST_LENGTH] if step_inputs == "past_length" else STEP_INPUTS) if kv_cache == "static" else []
        return [TOKEN_IDS, *conditioning_inputs, *cache, *layers("past", num_layers)], \
            [LOGITS, *layers("present", num_layers)]
    if graph == "audio_decoder":
        return [AUDIO_CODES], [AUDIO_VALUES]
    if graph == "audio_encoder":
        return [AUDIO_VALUES], [AUDIO_CODES]
    if graph in STEMS_GRAPHS:
        return [STEMS_WAVE, STEMS_SPEC], [STEMS_TIME, STEMS_FREQ]
    return [], []
