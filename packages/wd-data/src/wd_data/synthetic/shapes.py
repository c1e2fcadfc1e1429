"""The "shapes" world: 1-3 coloured shapes moving at constant velocity and bouncing off the walls.

Coordinates are pixels, x to the right and y down, measured from the top-left corner of the image
(pixel (i, j) covers [j, j+1) x [i, i+1)). A shape's position is the centroid of its area, so the
centroid of its rendered pixels recovers it. Every shape in a clip has a different palette colour,
which makes colour thresholding (`detect_shapes`) enough to find each one in real or generated frames.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from wd_data.synthetic.clip import Clip, WorldDataset, check_clip_size, check_seed

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 70),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
}
BACKGROUND = (24, 24, 24)
KINDS = ("circle", "square", "triangle")

# Half-extents (left/right, up, down) in units of the size r. The triangle points up with half-width
# r and height 2r, placed so its centroid is the position (apex 4r/3 above, base 2r/3 below).
_EXTENTS = {"circle": (1.0, 1.0, 1.0), "square": (1.0, 1.0, 1.0), "triangle": (1.0, 4 / 3, 2 / 3)}
# Fraction of the bounding box a shape fills: circle pi/4, square 1, triangle 1/2; cut halfway.
_SQUARE_MIN_FILL = 0.9
_CIRCLE_MIN_FILL = 0.64


@dataclass
class ShapesConfig:
    """Image size, clip length and the ranges shapes are drawn from (sizes and speeds relative to min(H, W))."""

    height: int = 64
    width: int = 64
    num_frames: int = 16
    fps: float = 8.0  # playback rate of the clips (motion is set per frame, so it does not change them)
    min_shapes: int = 1
    max_shapes: int = 3
    min_size: float = 0.08  # shape half-extent r as a fraction of min(H, W), at least 2 px
    max_size: float = 0.16
    min_speed: float = 0.02  # per frame, as a fraction of min(H, W)
    max_speed: float = 0.06

    def __post_init__(self) -> None:
        check_clip_size("shapes", self.height, self.width, self.num_frames)
        if not 1 <= self.min_shapes <= self.max_shapes <= len(PALETTE):
            raise ValueError(f"need 1 <= min_shapes <= max_shapes <= {len(PALETTE)} (one colour per shape)")
        # 2 * (4/3) r must fit in the image for the tallest shape, the triangle.
        if not 0 < self.min_size <= self.max_size <= 0.3:
            raise ValueError(f"need 0 < min_size <= max_size <= 0.3, got {self.min_size}, {self.max_size}")
        if not 0 < self.min_speed <= self.max_speed:
            raise ValueError(f"need 0 < min_speed <= max_speed, got {self.min_speed}, {self.max_speed}")


class Detection(NamedTuple):
    """One palette colour found in a frame: its shape kind by fill ratio, centroid (x, y) in pixels, pixel count."""

    colour: str
    kind: str
    centre: tuple[float, float]
    num_pixels: int


def _bounce(start: np.ndarray, velocity: np.ndarray, low: np.ndarray, high: np.ndarray, num_frames: int):
    """Positions and velocities (N, S, 2) of points reflected between low and high (S, 2) at every frame."""
    steps = np.arange(num_frames, dtype=np.float64)[:, None, None]
    span = high - low
    # Unfold the reflections: travel on a line of period 2*span, then fold the second half back.
    unfolded = np.mod(start - low + velocity * steps, 2 * span)
    forward = unfolded <= span
    positions = low + np.where(forward, unfolded, 2 * span - unfolded)
    velocities = np.where(forward, velocity, -velocity)
    return positions, velocities


def _shape_masks(kind: str, centres: np.ndarray, size: float, height: int, width: int) -> np.ndarray:
    """Bool (N, H, W): which pixel centres lie inside the shape at each frame's centre (N, 2)."""
    dx = np.arange(width, dtype=np.float32)[None, None, :] + 0.5 - centres[:, 0, None, None]
    dy = np.arange(height, dtype=np.float32)[None, :, None] + 0.5 - centres[:, 1, None, None]
    if kind == "circle":
        return dx**2 + dy**2 <= size**2
    if kind == "square":
        return (np.abs(dx) <= size) & (np.abs(dy) <= size)
    below_apex = dy + size * 4 / 3
    return (below_apex >= 0) & (dy <= size * 2 / 3) & (np.abs(dx) <= below_apex / 2)


def _direction(velocity: np.ndarray) -> str:
    """Eight-way direction word of an image-space velocity (y down), e.g. "up-left"."""
    speed = float(np.hypot(*velocity))
    # sin(22.5 deg): a component under this share of the speed is not worth naming.
    named = np.abs(velocity) >= 0.38 * speed
    vertical = ("down" if velocity[1] > 0 else "up") if named[1] else ""
    horizontal = ("right" if velocity[0] > 0 else "left") if named[0] else ""
    return "-".join(word for word in (vertical, horizontal) if word)


class ShapesWorld:
    """Renders a deterministic clip per seed: shapes in distinct palette colours bouncing on a plain background."""

    name = "shapes"

    def __init__(self, config: ShapesConfig | None = None) -> None:
        self.config = config or ShapesConfig()

    def render(self, seed: int) -> Clip:
        """Clip with frames uint8 (N, H, W, 3); state: positions/velocities (N, S, 2), sizes, colours, kinds (S,)."""
        c = self.config
        rng = np.random.default_rng(check_seed(seed))
        scale = min(c.height, c.width)
        count = int(rng.integers(c.min_shapes, c.max_shapes + 1))
        colours = rng.choice(list(PALETTE), size=count, replace=False)
        kinds = rng.choice(KINDS, size=count)
        sizes = np.maximum(rng.uniform(c.min_size, c.max_size, count) * scale, 2.0)
        extents = np.array([_EXTENTS[kind] for kind in kinds]) * sizes[:, None]
        low = np.stack([extents[:, 0], extents[:, 1]], axis=1)
        high = np.stack([c.width - extents[:, 0], c.height - extents[:, 2]], axis=1)
        start = rng.uniform(low, high)
        angle = rng.uniform(0, 2 * np.pi, count)
        speed = rng.uniform(c.min_speed, c.max_speed, count) * scale
        velocity = np.stack([np.cos(angle), np.sin(angle)], axis=1) * speed[:, None]
        positions, velocities = _bounce(start, velocity, low, high, c.num_frames)

        frames = np.empty((c.num_frames, c.height, c.width, 3), dtype=np.uint8)
        frames[:] = BACKGROUND
        for index, kind in enumerate(kinds):  # later shapes are drawn on top
            frames[_shape_masks(kind, positions[:, index], sizes[index], c.height, c.width)] = PALETTE[colours[index]]

        bounced = np.any(np.sign(velocities) != np.sign(velocities[:1]), axis=(0, 2))
        clauses = [
            f"a {colour} {kind} moves {_direction(v)}" + (" and bounces" if hit else "")
            for colour, kind, v, hit in zip(colours, kinds, velocity, bounced, strict=True)
        ]
        state = {
            "positions": positions.astype(np.float32),
            "velocities": velocities.astype(np.float32),
            "sizes": sizes.astype(np.float32),
            "colours": colours,
            "kinds": kinds,
            "bounced": bounced,
        }
        return Clip(frames=frames, caption=", ".join(clauses), state=state, actions=None, seed=int(seed))


def palette_labels(frame: np.ndarray, tolerance: float = 80.0) -> np.ndarray:
    """int (H, W) label of each pixel of a uint8 (H, W, 3) frame: the index of the nearest PALETTE colour,
    len(PALETTE) for the background, -1 where the nearest is further than `tolerance` (RGB distance)."""
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame must be (H, W, 3), got shape {frame.shape}")
    references = np.array([*PALETTE.values(), BACKGROUND], dtype=np.float32)
    distances = np.linalg.norm(frame[:, :, None, :].astype(np.float32) - references, axis=-1)
    return np.where(np.min(distances, axis=-1) <= tolerance, np.argmin(distances, axis=-1), -1)


def colour_mask(frame: np.ndarray, colour: str, tolerance: float = 80.0) -> np.ndarray:
    """bool (H, W): the pixels of a uint8 (H, W, 3) frame that `palette_labels` gives to PALETTE colour `colour`."""
    if colour not in PALETTE:
        raise ValueError(f"unknown colour {colour!r}; the palette has {list(PALETTE)}")
    return palette_labels(frame, tolerance) == list(PALETTE).index(colour)


def detect_shapes(frame: np.ndarray, tolerance: float = 80.0, min_pixels: int = 4) -> list[Detection]:
    """Find each palette colour in a uint8 (H, W, 3) frame: a pixel counts for the palette colour (or the
    background) nearest to it, if within `tolerance` (RGB distance); colours with < min_pixels are absent.

    Limits: one detection per colour (two shapes of one colour merge); a shape partly hidden by another
    gets the centroid and kind of its visible part; stray pixels of its colour elsewhere move the
    centroid and spoil the kind, which is read from how much of its bounding box the colour fills.
    """
    labels = palette_labels(frame, tolerance)
    detections = []
    for index, colour in enumerate(PALETTE):
        rows, cols = np.nonzero(labels == index)
        if rows.size < min_pixels:
            continue
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        fill = rows.size / box
        kind = "square" if fill >= _SQUARE_MIN_FILL else "circle" if fill >= _CIRCLE_MIN_FILL else "triangle"
        centre = (float(cols.mean() + 0.5), float(rows.mean() + 0.5))
        detections.append(Detection(colour, kind, centre, int(rows.size)))
    return detections


class ShapesDataset(WorldDataset):
    """Torch dataset: sample i is the shapes clip of seeds[i] (see the data contract for the dict)."""

    def __init__(self, config: ShapesConfig | None = None, seeds: Sequence[int] = range(1000)) -> None:
        super().__init__(ShapesWorld(config), seeds)
