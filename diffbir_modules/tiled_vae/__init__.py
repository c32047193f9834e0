"""Exact tiled VAE encode and decode for the SD KL autoencoder (ComfyUI's ``AutoencoderKL``).

Why not ComfyUI's ``VAE.decode_tiled`` / ``encode_tiled``: they run every tile through the whole
network on its own, so every GroupNorm normalises a tile with that tile's statistics; tiles of
different content come out with different brightness and contrast, and the feathered overlaps only
hide the borders (docs/tiling.md has the measured colour differences). The official DiffBIR v2.1 code
uses the multidiffusion "Tiled VAE", which shares GroupNorm statistics across tiles but averages
per-tile variances (missing the spread of the tile means), counts the overlaps twice and runs the
mid-block attention per tile, so it is close to, but not, an untiled decode.

What this module does (our own design, the same idea done exactly):
- the latent-resolution part that has global attention runs whole: for the decoder
  ``post_quant_conv, conv_in, mid`` (512 channels at 1/8 resolution: small), for the encoder
  ``mid, norm_out, conv_out, quant_conv`` after the tiled part;
- the high-resolution part is cut into segments (one resblock each, with the upsample, downsample or
  first conv in front of it). Between segments the feature map is kept as the tiles' own,
  non-overlapping regions, so it takes what the untiled map takes; a tile's input to the next segment
  is its own region plus a halo of that segment's receptive field (2-6 elements) cut from its
  neighbours (halo exchange): no tile carries the receptive field of the whole rest of the network;
- segments of the low-resolution levels run as one whole-image tile where their whole map takes no
  more than a tile already does elsewhere (no halo recompute there, same peak);
- inside a segment the tiles run in lockstep: each advances to the next GroupNorm, the statistics are
  accumulated over the tiles' own regions with Chan's parallel mean/variance (one pass of PyTorch's
  GroupNorm kernel per tile, less its halo frame), and every tile is normalised with the whole-image
  statistics in one pass. Waiting tiles park what they hand out (up to twice the
  block's channels) on ComfyUI's intermediate device (CPU memory when the VAE runs on a GPU);
- where that parked state would not fit (more than 1/8 of the parking device's free memory), a level
  *replays* instead: only each segment's input is kept, each GroupNorm's statistics come from a pass
  that runs every tile from that input up to it, and a last pass produces the output. It costs the
  first half of each block again (about +40% for a decoder with its full-resolution level replayed)
  and halves the peak: one 128-channel full-resolution map instead of two.
Every value of a tile's own region is computed from exactly the values an untiled pass uses: the
result equals the untiled decode/encode to float rounding, and replay equals lockstep bit for bit.
Encoder tiles start on multiples of 8 pixels so the stride-2 convolutions keep the untiled grid.

One job per file:

- ``planning``: valid tile sizes, the automatic tile, the levels that replay, the devices;
- ``tiles``: the tiles' own regions and the feature map kept as them (halo exchange);
- ``network``: the autoencoder's pieces (resblock programs, sliced mid attention, progress blocks);
- ``segments``: the network cut into segments with their halos;
- ``engine``: lockstep and replay with whole-image GroupNorm statistics;
- ``decoder`` / ``encoder``: ``decode`` and ``encode``, the package's API.
"""

from .decoder import decode
from .encoder import encode
from .planning import TiledVAEError, validate_tile

__all__ = ["TiledVAEError", "decode", "encode", "validate_tile"]
