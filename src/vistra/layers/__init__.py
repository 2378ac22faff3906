"""Building blocks shared by every vistra model."""
from vistra.layers.attention import Attention, SpatialReductionAttention
from vistra.layers.grid import grid_to_tokens, tokens_to_grid
from vistra.layers.linear import Linear, packed_weights_supported, use_packed_weights
from vistra.layers.mlp import ConvMlp, DropPath, Mlp, drop_path_rates
from vistra.layers.patch_embed import OverlapPatchEmbed, PatchEmbed
from vistra.layers.position import resample_abs_pos_embed

__all__ = [
    "Attention",
    "ConvMlp",
    "DropPath",
    "Linear",
    "Mlp",
    "OverlapPatchEmbed",
    "PatchEmbed",
    "SpatialReductionAttention",
    "drop_path_rates",
    "grid_to_tokens",
    "packed_weights_supported",
    "resample_abs_pos_embed",
    "tokens_to_grid",
    "use_packed_weights",
]
