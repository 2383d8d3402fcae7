"""A ViT's residual stream on the residual grid: token embeddings and block outputs quantized.

The residual stream of timm's ``VisionTransformer`` starts as ``cat(class token, patch tokens) +
position embedding`` and each block adds its attention's and its MLP's outputs to it. The patch
tokens come from a quantized convolution (integers on its output grid); the class token and the
position embedding are float parameters. When both are quantized onto a power-of-two grid
(``residual_bits``, learned scales), and so is each block's branch output (its ``ls1`` / ``ls2``
slot, an identity without layer scale, becomes a quantizer, as a ResNet's residual BatchNorm
quantizes its output), every term of the stream is an integer on a small grid: the ``cat`` and
the adds run on integers, and the stream's integers stay far below 2^24.

:class:`QuantVisionTransformer` is a static subclass of timm's ``VisionTransformer`` whose
``_pos_embed`` reads the class token and the position embedding through ``token_quantizer`` and
``pos_quantizer``; :func:`quantize_stream` makes a model one, in place (its class
changes to that static subclass, as a quantized layer takes over a float one; the state_dict keys
stay, plus the two quantizers'). Dynamic image sizes, register tokens and subclasses of
``VisionTransformer`` (which have their own ``_pos_embed``) are left float.
"""
from __future__ import annotations

import torch
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn


def has_token_embeddings(model: nn.Module) -> bool:
    """A timm ``VisionTransformer`` (that class exactly) whose embeddings this module quantizes."""
    return type(model) is VisionTransformer and model.pos_embed is not None and not model.dynamic_img_size \
        and model.reg_token is None


class QuantVisionTransformer(VisionTransformer):
    token_quantizer: nn.Module | None
    pos_quantizer: nn.Module

    def after_calibration(self) -> None:
        """The class token starts on the position embedding's grid: it joins the stream as they
        do, and a grid calibrated on a token initialized near 0 (timm: std 1e-6) would be too
        fine to align with the patch tokens on integers."""
        if self.token_quantizer is not None:
            with torch.no_grad():
                self.token_quantizer.log2_scale.copy_(self.pos_quantizer.log2_scale)

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        pos = self.pos_quantizer(self.pos_embed)
        tokens = [] if self.cls_token is None else [self.token_quantizer(self.cls_token).expand(x.shape[0], -1, -1)]
        if self.no_embed_class:
            x = torch.cat(tokens + [x + pos], dim=1)
        else:
            x = torch.cat(tokens + [x], dim=1) + pos
        return self.pos_drop(x)


def quantize_stream(model: VisionTransformer, grid) -> None:
    """Make ``model`` a :class:`QuantVisionTransformer` and quantize its blocks' branch outputs, in
    place; ``grid()`` makes a quantizer."""
    model.pos_quantizer = grid()
    model.token_quantizer = None if model.cls_token is None else grid()
    model.__class__ = QuantVisionTransformer
    for block in model.blocks:
        if type(block) is Block:
            for slot in ("ls1", "ls2"):
                if type(getattr(block, slot)) is nn.Identity:
                    setattr(block, slot, grid())
