"""Image transform shared by all datasets: grayscale -> normalised float tensor ``(C, H, W)``.

Train-time augmentation is deliberately mild and never flips horizontally: the side of a
finding ("left pleural effusion") is part of the label.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..utils.checks import check_int

FITS = ("pad", "stretch", "crop")
NORMALIZATIONS = ("half", "imagenet")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_float_image(image) -> torch.Tensor:
    """A grayscale image as float32 ``(H, W)`` in ``[0, 1]``.

    Accepts a PIL image, a numpy array or a tensor, ``(H, W)`` or ``(1, H, W)``; uint8 is
    divided by 255, uint16 / int32 by 65535, floats must already lie in ``[0, 1]``.
    """
    if not isinstance(image, (torch.Tensor, np.ndarray)):
        try:
            from PIL import Image
        except ImportError:  # pragma: no cover - pillow is a dependency
            Image = None
        if Image is not None and isinstance(image, Image.Image):
            image = np.array(image.convert("L") if image.mode not in ("L", "I;16", "I", "F") else image)
        else:
            raise TypeError(f"image must be a tensor, numpy array or PIL image, got {type(image).__name__}")
    t = torch.as_tensor(image)
    if t.dim() == 3 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 2:
        raise ValueError(f"image must be grayscale (H, W) or (1, H, W), got shape {tuple(t.shape)}")
    if t.shape[0] < 1 or t.shape[1] < 1:
        raise ValueError(f"image is empty: shape {tuple(t.shape)}")
    if t.dtype == torch.uint8:
        return t.float() / 255.0
    if t.dtype in (torch.int16, torch.int32, torch.int64, torch.uint16):
        return t.float().clamp(0, 65535) / 65535.0
    if t.dtype == torch.bool:
        raise TypeError("image must not be a bool tensor")
    t = t.float()
    if not torch.isfinite(t).all():
        raise ValueError("image contains NaN or infinite values")
    if t.min() < 0 or t.max() > 1:
        raise ValueError(f"a float image must lie in [0, 1], got [{t.min():.3g}, {t.max():.3g}]")
    return t


class ImageTransform:
    """Grayscale image -> float32 ``(in_chans, image_size, image_size)``, normalised by
    ``normalize``: ``"half"`` (default; mean 0.5 / std 0.5, so ``[0, 1]`` maps to ``[-1, 1]``) or
    ``"imagenet"`` (the gray channel repeated to RGB, then ImageNet's per-channel mean
    ``(0.485, 0.456, 0.406)`` and std ``(0.229, 0.224, 0.225)``, as torchvision's ``Normalize``
    after ``Image.convert("RGB")`` in the published MedTrim code; needs ``in_chans=3``).

    Args:
        image_size: output side length.
        in_chans: output channels (the gray channel repeated; 3 for ImageNet-style encoders).
        train: apply augmentation: a small random affine (rotation +-``rotate`` degrees,
            translation +-``translate`` of the size, scale in ``scale``) and brightness /
            contrast jitter. Never a horizontal flip.
        fit: how a non-square image becomes square: ``"pad"`` (default: zero-pad the short side,
            nothing is cut off or distorted), ``"stretch"``, or ``"crop"`` (centre crop).

    Resizing is bilinear with antialiasing. Call as ``transform(image, generator=g)``; with a
    ``torch.Generator`` the augmentation is deterministic, without one it uses torch's global
    RNG (which ``DataLoader`` seeds per worker).
    """

    def __init__(self, image_size: int = 224, in_chans: int = 1, train: bool = False, *,
                 fit: str = "pad", rotate: float = 5.0, translate: float = 0.04,
                 scale: tuple[float, float] = (0.95, 1.05), brightness: float = 0.1,
                 contrast: float = 0.1, normalize: str = "half"):
        check_int("image_size", image_size, minimum=8)
        check_int("in_chans", in_chans)
        if not isinstance(train, bool):
            raise TypeError(f"train must be a bool, got {type(train).__name__}")
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        if normalize == "imagenet" and in_chans != 3:
            raise ValueError(f"normalize='imagenet' gives RGB images: in_chans must be 3, got {in_chans}")
        if fit not in FITS:
            raise ValueError(f"fit must be one of {FITS}, got {fit!r}")
        if not (0 <= rotate <= 45 and 0 <= translate <= 0.5 and 0 <= brightness <= 1 and 0 <= contrast <= 1):
            raise ValueError("augmentation ranges out of bounds: rotate in [0, 45], translate in "
                             "[0, 0.5], brightness and contrast in [0, 1]")
        if len(scale) != 2 or not (0 < scale[0] <= scale[1]):
            raise ValueError(f"scale must be (lo, hi) with 0 < lo <= hi, got {scale!r}")
        self.image_size, self.in_chans, self.train, self.fit = image_size, in_chans, train, fit
        self.normalize = normalize
        self.rotate, self.translate, self.scale = float(rotate), float(translate), tuple(map(float, scale))
        self.brightness, self.contrast = float(brightness), float(contrast)

    def __repr__(self) -> str:
        return (f"ImageTransform(image_size={self.image_size}, in_chans={self.in_chans}, "
                f"train={self.train}, fit={self.fit!r}, normalize={self.normalize!r})")

    def _square(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h == w or self.fit == "stretch":
            return x
        if self.fit == "crop":
            s = min(h, w)
            top, left = (h - s) // 2, (w - s) // 2
            return x[..., top:top + s, left:left + s]
        s = max(h, w)
        top, left = (s - h) // 2, (s - w) // 2
        return F.pad(x, (left, s - w - left, top, s - h - top))

    def _uniform(self, lo: float, hi: float, generator) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=generator))

    def __call__(self, image, generator: torch.Generator | None = None) -> torch.Tensor:
        x = to_float_image(image)[None, None]  # (1, 1, H, W)
        x = self._square(x)
        size = self.image_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                              antialias=True).clamp_(0, 1)
        if self.train:
            x = self._augment(x, generator)
        x = x[0].expand(self.in_chans, size, size)
        if self.normalize == "imagenet":
            mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype).view(3, 1, 1)
            std = torch.tensor(IMAGENET_STD, dtype=x.dtype).view(3, 1, 1)
            return ((x - mean) / std).contiguous()
        return ((x - 0.5) / 0.5).contiguous()

    def _augment(self, x: torch.Tensor, generator) -> torch.Tensor:
        u = self._uniform
        angle = math.radians(u(-self.rotate, self.rotate, generator))
        s = u(*self.scale, generator)
        tx = u(-self.translate, self.translate, generator) * 2  # grid units span 2
        ty = u(-self.translate, self.translate, generator) * 2
        c, si = math.cos(angle) / s, math.sin(angle) / s
        theta = torch.tensor([[[c, -si, tx], [si, c, ty]]], dtype=x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        b = u(-self.brightness, self.brightness, generator)
        k = u(1 - self.contrast, 1 + self.contrast, generator)
        mean = x.mean()
        return ((x - mean) * k + mean + b).clamp_(0, 1)
