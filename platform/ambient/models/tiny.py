"""A tiny SDXL-architecture pipeline with random weights, built from config alone (no download).

Every component has SDXL's structure (a text_time UNet, two CLIP text encoders whose penultimate
hidden states are concatenated, a KL autoencoder, an Euler scheduler with SDXL's schedule), only
narrow: about 6 M parameters in all. It is the model of the tests and of the offline demo.

The VAE downsamples by 4 (three blocks), not SDXL's 8: at 64 px an 8x VAE leaves 8x8 latents, too
coarse for the shapes of the synthetic dataset to survive a small autoencoder; 16x16 latents
reconstruct well after a minute of training.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from ..synthetic import ALL_SHAPES, COLORS

TEXT_HIDDEN = 32  # each encoder; concatenated they give the UNet's cross_attention_dim
PROJECTION_DIM = 32  # text_encoder_2's pooled projection
ADDITION_TIME_EMBED_DIM = 8
VAE_BLOCKS = (16, 32, 64)  # three blocks: two downsamplings, x4; narrow at full resolution for CPU speed
VAE_SCALE_FACTOR = 2 ** (len(VAE_BLOCKS) - 1)
MAX_LENGTH = 77  # CLIP's context; diffusers pads every prompt to tokenizer.model_max_length

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# Words of the synthetic captions (and of typical demo prompts) get single tokens; anything else
# falls back to byte-level characters, which are all in the vocabulary.
WORDS = (*COLORS, *ALL_SHAPES, "a", "an", "on", "the", "of", "with", "and", "background", "photo", "image")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode map (the alphabet of byte-level BPE)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def _bpe(word: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply merges in rank order, as the BPE model does."""
    while len(word) > 1:
        pairs = [
            (ranks.get((a, b), len(ranks) + 1), i)
            for i, (a, b) in enumerate(zip(word, word[1:], strict=False))
        ]
        rank, i = min(pairs)
        if rank > len(ranks):
            break
        word = [*word[:i], word[i] + word[i + 1], *word[i + 2 :]]
    return word


def build_vocab(words: Iterable[str] = WORDS) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A CLIP-style byte-level BPE vocabulary: every byte (alone and word-final), merges that make
    each of ``words`` one token, then the two special tokens (last, as in CLIP's vocabulary).

    Merges are appended one at a time at the lowest priority, each joining the first two pieces of
    a word as the merges so far tokenise it; a lowest-priority merge cannot change the tokenisation
    of words already finished, so every word ends as a single token.
    """
    alphabet = list(_bytes_to_unicode().values())
    tokens = alphabet + [c + "</w>" for c in alphabet]
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in dict.fromkeys(words):
        pieces = [*word[:-1], word[-1] + "</w>"]
        while len(pieces := _bpe(pieces, ranks)) > 1:
            pair = (pieces[0], pieces[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            tokens.append(pair[0] + pair[1])
    tokens += [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}, merges


def build_tokenizer() -> CLIPTokenizer:
    vocab, merges = build_vocab()
    # Merges must be tuples (the tokenizers BPE model reads "a b" strings as one symbol otherwise).
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_LENGTH)


def _text_config(tokenizer: CLIPTokenizer, hidden_act: str) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_HIDDEN,
        intermediate_size=64,
        num_hidden_layers=3,  # SDXL reads the penultimate layer, so keep more than one
        num_attention_heads=4,
        max_position_embeddings=MAX_LENGTH,
        projection_dim=PROJECTION_DIM,
        hidden_act=hidden_act,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,  # the pooled output is read at the EOS position
        pad_token_id=tokenizer.pad_token_id,
    )


def build_unet(resolution: int = 64) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=resolution // VAE_SCALE_FACTOR,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(64, 128),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=32,
        attention_head_dim=(4, 8),  # diffusers' name; it is the number of heads (head size 16)
        transformer_layers_per_block=1,
        use_linear_projection=True,
        cross_attention_dim=2 * TEXT_HIDDEN,
        addition_embed_type="text_time",
        addition_time_embed_dim=ADDITION_TIME_EMBED_DIM,
        # six time ids (original size, crop corner, target size) plus the pooled text embedding
        projection_class_embeddings_input_dim=6 * ADDITION_TIME_EMBED_DIM + PROJECTION_DIM,
    )


def build_vae(resolution: int = 64) -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(VAE_BLOCKS),
        up_block_types=("UpDecoderBlock2D",) * len(VAE_BLOCKS),
        block_out_channels=VAE_BLOCKS,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=resolution,
        scaling_factor=1.0,  # set from the latents' spread by vae_pretrain after training
        force_upcast=False,
        # Without the mid-block attention the VAE is fully convolutional, so vae_pretrain can train it
        # on crops (4x cheaper) and it behaves the same on whole images.
        mid_block_add_attention=False,
    )


def build_scheduler(prediction_type: str = "v_prediction") -> EulerDiscreteScheduler:
    """SDXL base's scheduler config, by default predicting v rather than epsilon (as SD 2.x-v does).

    With epsilon prediction the clean estimate is x - sigma * eps: at sigma_max = 14.6 any error in the
    predicted noise's spatial mean is magnified 14.6 times, and on a 16 x 16 latent the start noise's mean
    (spread 0.9) is as large as the gap between two background colours. An epsilon-prediction base draws
    backgrounds at chance (docs/benchmarks.md, "The base model"); v prediction bounds the output's scale at every level. Real SDXL
    checkpoints keep their own scheduler config; the platform reads prediction_type from it."""
    return EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type=prediction_type,
        timestep_spacing="leading",
        steps_offset=1,
        interpolation_type="linear",
        use_karras_sigmas=False,
    )


def build_tiny_pipeline(seed: int = 0, resolution: int = 64) -> StableDiffusionXLPipeline:
    """A random-weight SDXL pipeline whose default image size is ``resolution`` pixels."""
    if resolution % (4 * VAE_SCALE_FACTOR):
        raise ValueError(f"resolution must be a multiple of {4 * VAE_SCALE_FACTOR}, got {resolution}")
    tokenizer = build_tokenizer()
    tokenizer_2 = build_tokenizer()
    # diffusers and transformers initialise from the global generator: seed it, sparing the caller's.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pipe = StableDiffusionXLPipeline(
            vae=build_vae(resolution),
            text_encoder=CLIPTextModel(_text_config(tokenizer, "quick_gelu")),
            text_encoder_2=CLIPTextModelWithProjection(_text_config(tokenizer_2, "gelu")),
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=build_unet(resolution),
            scheduler=build_scheduler(),
            add_watermarker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def parameter_counts(pipe: StableDiffusionXLPipeline) -> dict[str, int]:
    """Parameters per model component (and their total)."""
    counts = {
        name: sum(p.numel() for p in getattr(pipe, name).parameters())
        for name in ("unet", "vae", "text_encoder", "text_encoder_2")
    }
    counts["total"] = sum(counts.values())
    return counts
