"""A person's own material for ``avatar train``: the used frames of a video avatar's source,
split into a training part and a held-out tail, and the training batches drawn from it.

The tail of the video holding the last ``holdout`` share of the speech is never trained on:
it is where :mod:`models.person_eval` compares the old and the new model afterwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from models.audio import SAMPLES_PER_VIDEO_FRAME
from models.avatar import Avatar, AvatarError, keep_mask
from models.data import mel_windows
from models.melaug import perturb

MIN_TRAIN_FRAMES = 50  # 2 s: less cannot teach the generator a mouth
MIN_HELDOUT_FRAMES = 12
GAP_FRAMES = 6  # frames between training and held-out part (the mel window spans 240 ms)


class FinetuneError(AvatarError):
    """The avatar cannot be trained (as it is); the message says why."""


@dataclass(frozen=True)
class PersonData:
    """The used frames of a video avatar's source, in time order (index i = i-th used frame)."""

    crops: np.ndarray  # (m, S, S, 3) uint8: the real mouth crops
    frames: np.ndarray  # (m,) int: the frame index in the 25 fps video
    windows: np.ndarray  # (m, T, 80) float16: mel windows of the person's speech
    silent: np.ndarray  # (m,) bool
    train: np.ndarray  # indices into the arrays above
    heldout: np.ndarray
    mask: np.ndarray  # (S, S) float32 feather mask
    reference: np.ndarray  # (S, S, 3) uint8
    # (S, S) float32 loss weight on top of the mask (the lips, where the mouth moves), or None
    focus: np.ndarray | None = None
    # (m,) bool: frames whose lips press together (p/b/m; known for the teacher's frames only)
    closed: np.ndarray | None = None

    def clips(self) -> list[np.ndarray]:
        """The held-out indices split into runs of consecutive video frames."""
        if not len(self.heldout):
            return []
        breaks = np.flatnonzero(np.diff(self.frames[self.heldout]) != 1) + 1
        return [c for c in np.split(self.heldout, breaks) if len(c)]


def load_person(avatar: Avatar, holdout: float = 0.15) -> PersonData:
    """Read ``person/`` of a video avatar and split off the held-out tail."""
    from models.videoio import read_crops

    person = avatar.path / "person"
    paths = [person / p for p in ("crops.mp4", "audio.npy", "track.npz")]
    if avatar.manifest.kind != "video" or not all(p.is_file() for p in paths):
        raise FinetuneError(
            f"avatar {avatar.name!r} has no video material to train on (person/ is missing): "
            "training needs an avatar made with `avatarcast avatar create NAME --video FILE`"
        )
    with np.load(paths[2]) as track:
        valid = np.asarray(track["valid"], bool)
        silent_all = np.asarray(track["silent"], bool)
    frames = np.flatnonzero(valid)
    crops = np.stack(list(read_crops(paths[0]))) if len(frames) else np.zeros((0,))
    if len(crops) != len(frames):
        raise FinetuneError(
            f"{paths[0]} holds {len(crops)} crops for {len(frames)} used frames: "
            "recreate the avatar"
        )
    samples = np.load(paths[1]).astype(np.float32) / 32767.0
    n = len(valid)
    samples = np.pad(samples, (0, max(0, n * SAMPLES_PER_VIDEO_FRAME - len(samples))))
    windows = mel_windows(samples[: n * SAMPLES_PER_VIDEO_FRAME], avatar.window)[frames]
    silent = silent_all[frames]
    train, heldout = split_holdout(frames, silent, holdout)
    if len(train) < MIN_TRAIN_FRAMES or len(heldout) < MIN_HELDOUT_FRAMES:
        raise FinetuneError(
            f"avatar {avatar.name!r} has too little speech to train and check on "
            f"({len(train)} training, {len(heldout)} held-out frames; at least "
            f"{MIN_TRAIN_FRAMES} and {MIN_HELDOUT_FRAMES}): film a minute or more of talking"
        )
    return PersonData(
        crops=crops,
        frames=frames,
        windows=windows,
        silent=silent,
        train=train,
        heldout=heldout,
        mask=np.array(avatar.mask, np.float32),  # writable: torch shares it
        reference=np.array(avatar.reference),
    )


def split_holdout(
    frames: np.ndarray, silent: np.ndarray, holdout: float
) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices: the held-out tail holds the last ``holdout`` share of the
    speech frames (not of all frames: a long silent ending would leave nothing to judge lip
    sync on), with ``GAP_FRAMES`` left out between the two parts."""
    speech = np.flatnonzero(~silent)
    if not len(speech) or holdout <= 0:
        return np.arange(len(frames)), np.zeros(0, np.int64)
    k = max(1, math.ceil(holdout * len(speech)))
    first = int(speech[len(speech) - k])
    # Start the held-out part a little before its first speech frame: the mouth opens early.
    start = int(np.searchsorted(frames, frames[first] - GAP_FRAMES // 2))
    cut = int(frames[start])
    heldout = np.arange(start, len(frames))
    train = np.flatnonzero(frames < cut - GAP_FRAMES)
    return train, heldout


def _image(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0


def with_closures(
    rng: np.random.Generator, idx: np.ndarray, closed: np.ndarray, share: float
) -> np.ndarray:
    """``idx`` with each entry replaced, with probability ``share``, by one of the closure
    frames ``closed`` (the lips pressed together: p/b/m); also :mod:`models.polish`'s draw."""
    pick = rng.random(len(idx)) < share
    if len(closed):
        idx[pick] = rng.choice(closed, int(pick.sum()))
    return idx


def training_batch(
    data: PersonData,
    rng: np.random.Generator,
    batch: int,
    gain_db: float,
    colour: float = 0.0,
    closures: float = 0.0,
) -> dict[str, np.ndarray]:
    """reference, masked, target (B, 3, S, S) in [0, 1] and mel (B, T, 80), training frames
    only. The reference is the package's half the time (what run time uses), else another
    training frame, so that the mouth shape has to come from the audio. Each frame is a
    closure (``data.closed``) with probability ``closures``, else any training frame."""
    idx = data.train[rng.integers(0, len(data.train), batch)]
    if closures > 0 and data.closed is not None:
        idx = with_closures(rng, idx, data.train[data.closed[data.train]], closures)
    target = _image(data.crops[idx])
    refs = data.crops[data.train[rng.integers(0, len(data.train), batch)]].copy()
    refs[rng.random(batch) < 0.5] = data.reference
    keep = keep_mask(data.mask)
    return {
        "reference": _image(refs),
        "masked": target * keep[None, None],
        "target": target,
        "mel": perturb(data.windows[idx], rng, gain_db, colour),
    }


__all__ = [
    "GAP_FRAMES",
    "FinetuneError",
    "PersonData",
    "load_person",
    "split_holdout",
    "training_batch",
    "with_closures",
]
