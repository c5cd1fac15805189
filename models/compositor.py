"""Pasting the generated mouth into the avatar's base frame, then applying idle motion.

A transparent compositor also warps the person's alpha matte (:mod:`models.matte`) by the same
idle pose, so alpha follows the head, and packs colour and alpha side by side into one picture
twice as wide (colour left, alpha as grey right): any video codec then carries both, and a
player (web/alpha.js, or ``avatarcast render --transparent``) puts them back together.
"""

from __future__ import annotations

import cv2
import numpy as np

from models.avatar import Avatar, keep_mask
from models.detail import Reference, transfer_detail
from models.idle import STILL, IdleMotion, Pose
from models.matte import Matte, MatteError

# Along the matte's edge the picture still holds some of the old background (a light halo on a
# dark scene). There the colour is taken from the person just inside instead: fully own colour
# above OPAQUE, spread outwards over about SPREAD_PX.
OPAQUE = 0.97
SPREAD_PX = 3.0


class Compositor:
    """Per video frame k: the generator's image inputs, and the final RGB frame.

    Photo avatars stand on base frame 0 (or a blink frame) and move by :class:`IdleMotion`
    after pasting, so the mouth moves with the head. Video avatars play their frames forwards
    and backwards (no jump at the loop point) with their own per-frame boxes.
    """

    def __init__(
        self, avatar: Avatar, idle: bool = True, seed: int = 0, transparent: bool = False
    ) -> None:
        self.avatar = avatar
        self.transparent = transparent
        self._matte: Matte | None = None
        if transparent:
            self._matte = avatar.matte or Matte(avatar.path, avatar.frames)
        self._colours: dict[int, np.ndarray] = {}
        self._photo = avatar.manifest.kind == "photo"
        self._idle = (
            IdleMotion(avatar.manifest.blink_frames, seed) if idle and self._photo else None
        )
        size = avatar.crop_size
        self._size = size
        self._reference = _chw(avatar.reference)
        self._hole = keep_mask(avatar.mask)  # where the target stays visible
        self._masked: dict[int, np.ndarray] = {}
        self._masks: dict[int, np.ndarray] = {size: avatar.mask[..., None].astype(np.float32)}
        # A photo's reference crop is the same face at the same place: detail for the teeth.
        self._references: dict[int, Reference] = {}
        width, height = avatar.manifest.frame_size
        self._centre = (width / 2.0, height / 2.0)

    def pose(self, k: int) -> Pose:
        return self._idle.pose(k) if self._idle is not None else STILL

    def base_index(self, k: int, pose: Pose | None = None) -> int:
        n = len(self.avatar.frames)
        if self._photo:
            return (pose or self.pose(k)).base
        if n == 1:
            return 0
        period = 2 * (n - 1)
        i = k % period
        return i if i < n else period - i

    def inputs(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(reference, masked) for frame k, each (3, S, S) float32 in [0, 1]."""
        index = self.base_index(k)
        masked = self._masked.get(index)
        if masked is None:
            crop = self._crop(index)
            masked = _chw(crop) * self._hole[None]
            if self._photo or len(self._masked) < 256:  # a long video avatar: cache a loop's worth
                self._masked[index] = masked
        return self._reference, masked

    def _crop(self, index: int) -> np.ndarray:
        x0, y0, x1, y1 = (int(v) for v in self.avatar.boxes[index])
        return _square(self.avatar.frames[index, y0:y1, x0:x1], self._size)

    def _reference_detail(self, side: int) -> Reference | None:
        """The reference crop at the box's size as a source of detail, for photo avatars (a
        video's reference comes from one of its frames, its head elsewhere in the others)."""
        if not self._photo:
            return None
        reference = self._references.get(side)
        if reference is None:
            reference = self._references[side] = Reference(_square(self.avatar.reference, side))
        return reference

    def _mask(self, side: int) -> np.ndarray:
        mask = self._masks.get(side)
        if mask is None:
            mask = cv2.resize(self.avatar.mask, (side, side), interpolation=cv2.INTER_LINEAR)
            mask = np.clip(mask, 0.0, 1.0)[..., None].astype(np.float32)
            self._masks[side] = mask
        return mask

    def compose(self, k: int, mouth: np.ndarray | None) -> np.ndarray:
        """The RGB frame k (H, W, 3) uint8; ``mouth`` is the generator output (3, S, S) in
        [0, 1], or None for the plain base frame (no generator run)."""
        pose = self.pose(k)
        index = self.base_index(k, pose)
        frame = self._colour(index).copy()
        if mouth is not None:
            x0, y0, x1, y1 = (int(v) for v in self.avatar.boxes[index])
            side = x1 - x0
            hwc = np.ascontiguousarray(np.transpose(mouth, (1, 2, 0)), np.float32)
            gen: np.ndarray = hwc * 255.0
            if side != self._size:
                gen = cv2.resize(gen, (side, side), interpolation=cv2.INTER_LINEAR)
            region = frame[y0:y1, x0:x1].astype(np.float32)
            gen = transfer_detail(gen, region, self._reference_detail(side))
            # Blend in float and round once: a mask of 0 gives back the base pixels exactly.
            region += self._mask(side) * (gen - region)
            frame[y0:y1, x0:x1] = np.clip(np.rint(region), 0, 255).astype(np.uint8)
        frame = self._warp(frame, pose)
        if not self.transparent:
            return frame
        return pack(frame, self._warp(self._alpha(index), pose))

    def still(self, k: int) -> np.ndarray:
        """Frame ``k``'s base frame as it is, with no mouth and no motion (packed with its
        alpha when transparent): the picture when none was ever rendered."""
        index = self.base_index(k)
        if not self.transparent:
            return self.avatar.frames[index]
        return pack(self._colour(index), self._alpha(index))

    def _warp(self, image: np.ndarray, pose: Pose) -> np.ndarray:
        """The idle pose's similarity warp; colour and alpha go through the same one."""
        if pose.still:
            return image
        matrix = cv2.getRotationMatrix2D(self._centre, pose.rotation_deg, pose.scale)
        matrix[0, 2] += pose.dx
        matrix[1, 2] += pose.dy
        height, width = image.shape[:2]
        return cv2.warpAffine(
            image,
            matrix,
            (width, height),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REFLECT101,
        )

    def _alpha(self, index: int) -> np.ndarray:
        if self._matte is None:
            raise MatteError("this compositor is not transparent")
        return self._matte.get()[index]

    def _colour(self, index: int) -> np.ndarray:
        """Base frame ``index``; when transparent, with its edge colours taken from inside."""
        if not self.transparent:
            return self.avatar.frames[index]
        colour = self._colours.get(index)
        if colour is None:
            colour = unmix_edges(self.avatar.frames[index], self._alpha(index))
            if self._photo or len(self._colours) < 16:  # a video avatar's frames: a few only
                self._colours[index] = colour
        return colour


def pack(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Colour (H, W, 3) and alpha (H, W) as one RGB picture (H, 2W, 3): alpha as grey, right."""
    return np.concatenate([colour, np.repeat(alpha[..., None], 3, axis=2)], axis=1)


def unpack(packed: np.ndarray) -> np.ndarray:
    """The inverse of :func:`pack`: RGBA (H, W, 4) from a side-by-side picture (H, 2W, 3)."""
    width = packed.shape[1] // 2
    return np.concatenate([packed[:, :width], packed[:, width:, :1]], axis=2)


def unmix_edges(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``rgb`` where the person is opaque; along the edge, the colour of the person nearby."""
    a = alpha.astype(np.float32) / 255.0
    inside = (a >= OPAQUE).astype(np.float32)
    colour = rgb.astype(np.float32)
    num = cv2.GaussianBlur(colour * inside[..., None], (0, 0), SPREAD_PX)
    den = cv2.GaussianBlur(inside, (0, 0), SPREAD_PX)[..., None]
    spread = np.where(den > 1e-3, num / np.maximum(den, 1e-3), colour)
    keep = np.clip((a - 0.5) / (OPAQUE - 0.5), 0.0, 1.0)[..., None]
    return np.clip(np.rint(spread + keep * (colour - spread)), 0, 255).astype(np.uint8)


def _chw(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(image, (2, 0, 1)), np.float32) / 255.0


def _square(image: np.ndarray, side: int) -> np.ndarray:
    """A square ``image`` at ``side`` px: area-averaged when it shrinks, bilinear when it grows."""
    width = image.shape[1]
    if width == side:
        return image
    interp = cv2.INTER_AREA if width > side else cv2.INTER_LINEAR
    return cv2.resize(image, (side, side), interpolation=interp)
