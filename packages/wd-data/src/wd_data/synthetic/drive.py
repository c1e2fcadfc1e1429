"""The "drive" world: a flat road scene seen from a car that follows per-frame (yaw change, speed) actions.

World frame: metres on a flat ground plane, x east, y north, heading counter-clockwise from +x (as
nuScenes' ego yaw), so a positive yaw change is a left turn. The road runs north along x = 0 with
poles on both sides; distant mountains sit at infinity. Action t = (yaw change rad, speed m/s) moves
the car from frame t to frame t+1: heading += yaw change, then it drives speed / fps metres ahead.
In the image a left turn shifts the whole scene to the right (positive `estimate_yaw_change`) and turns
the road to the right (`estimate_road_heading` grows), and driving forward moves ground features down,
toward the camera (positive `estimate_forward_motion`).
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from wd_data.synthetic.clip import Clip, WorldDataset, check_clip_size, check_seed

_SKY_TOP = np.array([90, 140, 220], dtype=np.float32)
_HAZE = np.array([200, 210, 225], dtype=np.float32)
_MOUNTAIN = np.array([95, 105, 130], dtype=np.float32)
# Ground materials: grass, asphalt, paint (edge lines and centre dashes), and how much cells vary each.
_MATERIALS = np.array([[70, 135, 55], [95, 95, 100], [235, 235, 225]], dtype=np.float32)
_SHADE_AMPLITUDES = np.array([25, 15, 0], dtype=np.float32)
_POLE = np.array([60, 50, 45], dtype=np.float32)
_CELL = 2.0  # metres: side of the ground cells whose shades vary, so motion shows everywhere
_DARKEST_ROAD = 70.0  # mean RGB: unfogged asphalt is 80 at its darkest, a pole nearer than ~5 m darker
_MIN_ROAD_RUN = 1.0  # metres: narrower road-coloured runs are poles (0.3 m) or slivers
_SHADES = 4096  # entries in the per-seed table of cell shades (a power of two: indices wrap with a mask)


@dataclass
class DriveConfig:
    """Image size, camera, road and the ranges the seed's actions are drawn from."""

    height: int = 64
    width: int = 64
    num_frames: int = 16
    fps: float = 8.0
    fov_degrees: float = 90.0  # horizontal field of view of the pinhole camera
    horizon: float = 0.4  # image row of the horizon, as a fraction of the height
    camera_height: float = 1.5  # metres above the road
    road_width: float = 7.0
    pole_spacing: float = 12.0
    pole_height: float = 3.0
    fog_distance: float = 40.0  # metres at which a colour keeps 1/e of its contrast
    max_yaw_change: float = 0.03  # rad per frame, for actions drawn from the seed
    min_speed: float = 2.0  # m/s
    max_speed: float = 12.0

    def __post_init__(self) -> None:
        check_clip_size("drive", self.height, self.width, self.num_frames)
        if not self.fps > 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if not 0 < self.fov_degrees < 180:
            raise ValueError(f"fov_degrees must be in (0, 180), got {self.fov_degrees}")
        if not 0.1 <= self.horizon <= 0.9:
            raise ValueError(f"horizon must be in [0.1, 0.9], got {self.horizon}")
        if not 0 <= self.min_speed <= self.max_speed:
            raise ValueError(f"need 0 <= min_speed <= max_speed, got {self.min_speed}, {self.max_speed}")

    @property
    def focal(self) -> float:
        """Focal length in pixels."""
        return self.width / (2 * math.tan(math.radians(self.fov_degrees) / 2))

    @property
    def horizon_row(self) -> float:
        """Image y (pixels, down from the top edge) of the horizon."""
        return self.horizon * self.height


def _fog(colour: np.ndarray, distance: np.ndarray, fog_distance: float) -> np.ndarray:
    """Blend colours (..., 3) toward the haze with distance (broadcast to ...), hiding far-field aliasing."""
    keep = np.exp(-np.asarray(distance, dtype=np.float32) / fog_distance)[..., None]
    return colour * keep + _HAZE * (1 - keep)


class DriveWorld:
    """Renders a deterministic drive per seed; actions (N, 2) are given or drawn from the seed."""

    name = "drive"

    def __init__(self, config: DriveConfig | None = None) -> None:
        self.config = config or DriveConfig()

    def draw_actions(self, rng: np.random.Generator) -> np.ndarray:
        """Smooth random actions float32 (N, 2): a steady yaw rate with wobble, a speed that drifts."""
        c = self.config
        yaw = rng.uniform(-c.max_yaw_change, c.max_yaw_change) + rng.normal(0, 0.2 * c.max_yaw_change, c.num_frames)
        speed = rng.uniform(c.min_speed, c.max_speed) + np.cumsum(rng.normal(0, 0.3, c.num_frames))
        return np.stack(
            [np.clip(yaw, -c.max_yaw_change, c.max_yaw_change), np.clip(speed, c.min_speed, c.max_speed)], axis=1
        ).astype(np.float32)

    def render(self, seed: int, actions: np.ndarray | None = None) -> Clip:
        """Clip with frames uint8 (N, H, W, 3), actions float32 (N, 2) and state: heading (N,) rad,
        position (N, 2) m, speed (N,) m/s, vanishing_point_x (N,) px (the road's; nan when behind)."""
        c = self.config
        rng = np.random.default_rng(check_seed(seed))
        shades = rng.uniform(-1, 1, _SHADES).astype(np.float32)
        mountain_phases = rng.uniform(0, 2 * np.pi, 5)
        start = np.array([c.road_width / 4 + rng.uniform(-0.4, 0.4), rng.uniform(0, 1000)])
        start_heading = np.pi / 2 + rng.uniform(-0.05, 0.05)
        pole_offset = rng.uniform(0, c.pole_spacing)
        # Drawn after the world, so a seed's world is the same whether or not actions are given.
        actions = self.draw_actions(rng) if actions is None else np.asarray(actions, dtype=np.float32)
        if actions.shape != (c.num_frames, 2):
            raise ValueError(f"actions must be (num_frames, 2) = ({c.num_frames}, 2), got {actions.shape}")

        heading = start_heading + np.concatenate([[0.0], np.cumsum(actions[:-1, 0], dtype=np.float64)])
        steps = actions[:-1, 1:2] / c.fps * np.stack([np.cos(heading[1:]), np.sin(heading[1:])], axis=1)
        position = start + np.concatenate([np.zeros((1, 2)), np.cumsum(steps, axis=0)])

        frames = np.empty((c.num_frames, c.height, c.width, 3), dtype=np.uint8)
        horizon = int(np.ceil(c.horizon_row - 0.5))  # first row whose pixel centre lies below the horizon
        frames[:, :horizon] = np.rint(self._sky(heading, mountain_phases, horizon))
        frames[:, horizon:] = np.rint(self._ground(heading, position, shades, horizon))
        for index in range(c.num_frames):
            self._draw_poles(frames[index], heading[index], position[index], pole_offset)

        relative = np.pi / 2 - heading  # road bearing relative to the view, left positive
        vanishing = np.where(np.cos(relative) > 0, c.width / 2 - c.focal * np.tan(relative), np.nan)
        mean_yaw = float(actions[:, 0].mean())
        turn = "turns left" if mean_yaw > 0.005 else "turns right" if mean_yaw < -0.005 else "drives straight"
        state = {
            "heading": heading.astype(np.float32),
            "position": position.astype(np.float32),
            "speed": actions[:, 1].copy(),
            "vanishing_point_x": vanishing.astype(np.float32),
        }
        caption = f"the car {turn} along a country road at {actions[:, 1].mean():.0f} m/s"
        return Clip(frames, caption, state, actions, int(seed))

    def _sky(self, heading: np.ndarray, phases: np.ndarray, rows: int) -> np.ndarray:
        """Float (N, rows, W, 3): sky gradient and a mountain skyline fixed to world bearings."""
        c = self.config
        cols = np.arange(c.width) + 0.5
        bearing = heading[:, None] + np.arctan2(c.width / 2 - cols, c.focal)  # (N, W), left positive
        # Integer frequencies keep the skyline periodic over a full turn; elevation in radians.
        frequencies = np.array([3, 5, 8, 13, 21])
        amplitudes = np.array([0.05, 0.035, 0.025, 0.015, 0.01])
        elevation = 0.12 + np.sum(amplitudes * np.sin(frequencies * bearing[..., None] + phases), axis=-1)
        top = c.horizon_row - c.focal * np.tan(elevation)  # (N, W) image y of the mountain top
        y = np.arange(rows) + 0.5
        gradient = y[:, None] / c.horizon_row
        sky = _SKY_TOP * (1 - gradient) + _HAZE * gradient  # (rows, 3)
        is_mountain = y[None, :, None] >= top[:, None, :]  # (N, rows, W)
        mountain = _fog(_MOUNTAIN, np.full(1, 0.7 * c.fog_distance), c.fog_distance)
        return np.where(is_mountain[..., None], mountain, sky[None, :, None, :])

    def _ground(self, heading: np.ndarray, position: np.ndarray, shades: np.ndarray, first_row: int) -> np.ndarray:
        """Float (N, H - first_row, W, 3): road with edge lines and centre dashes, grass, cell shading, fog."""
        c = self.config
        below = np.arange(first_row, c.height, dtype=np.float32) + 0.5 - c.horizon_row
        ahead = c.focal * c.camera_height / below  # (rows,) distance ahead of each pixel row
        right = (np.arange(c.width, dtype=np.float32) + 0.5 - c.width / 2) / c.focal * ahead[:, None]  # (rows, W)
        cos = np.cos(heading).astype(np.float32)[:, None, None]
        sin = np.sin(heading).astype(np.float32)[:, None, None]
        position = position.astype(np.float32)
        x = position[:, 0, None, None] + ahead[:, None] * cos + right * sin  # (N, rows, W)
        y = position[:, 1, None, None] + ahead[:, None] * sin - right * cos
        cell = (np.floor(x / _CELL).astype(np.int32) * 7919 + np.floor(y / _CELL).astype(np.int32)) & (_SHADES - 1)
        half = c.road_width / 2
        across = np.abs(x)
        material = (across <= half).astype(np.int8)  # 0 grass, 1 asphalt, 2 paint
        material[(np.abs(across - (half - 0.2)) <= 0.12) | ((across <= 0.1) & (np.mod(y, 6.0) < 3.0))] = 2
        # Fog depends on the row only: fold it into per-row material colours (rows, 3, 3) and shade amplitudes.
        base = _fog(_MATERIALS, ahead[:, None], c.fog_distance)
        amplitude = _SHADE_AMPLITUDES * np.exp(-ahead / c.fog_distance)[:, None]
        row = np.arange(ahead.size)[:, None]
        return base[row, material] + (amplitude[row, material] * shades[cell])[..., None]

    def _draw_poles(self, frame: np.ndarray, heading: float, position: np.ndarray, offset: float) -> None:
        """Paint the roadside poles in front of the camera into one uint8 (H, W, 3) frame, far to near."""
        c = self.config
        reach = 100.0
        first = math.floor((position[1] - reach - offset) / c.pole_spacing)
        along = offset + c.pole_spacing * np.arange(first, first + int(2 * reach / c.pole_spacing) + 2)
        side = c.road_width / 2 + 1.5
        poles = np.concatenate([np.stack([np.full_like(along, sign * side), along], axis=1) for sign in (-1, 1)])
        delta = poles - position
        ahead = delta[:, 0] * math.cos(heading) + delta[:, 1] * math.sin(heading)
        right = delta[:, 0] * math.sin(heading) - delta[:, 1] * math.cos(heading)
        visible = (ahead > 0.5) & (ahead < reach)
        ahead, right = ahead[visible], right[visible]
        focal = c.focal
        centre = c.width / 2 + focal * right / ahead
        half_width = np.maximum(0.5, focal * 0.15 / ahead)
        boxes = np.rint(
            [
                c.horizon_row - focal * (c.pole_height - c.camera_height) / ahead,  # top
                c.horizon_row + focal * c.camera_height / ahead,  # bottom
                centre - half_width,  # left
                centre + half_width,  # right
            ]
        ).astype(np.int64).clip(0, max(c.height, c.width))
        colours = np.rint(_fog(_POLE, ahead, c.fog_distance))
        for index in np.argsort(-ahead):  # far to near, so nearer poles cover farther ones
            top, bottom, left, right_edge = boxes[:, index].tolist()
            frame[top:bottom, left:right_edge] = colours[index]


def _phase_correlation_peak(signal_a: np.ndarray, signal_b: np.ndarray) -> float:
    """Sub-pixel shift s along the last axis with signal_b(x) ~ signal_a(x - s), by phase correlation of
    (rows, n) signals; only horizontal shifts are searched (the zero vertical-lag row of the surface)."""
    spectrum = np.fft.fft2(signal_b) * np.conj(np.fft.fft2(signal_a))
    correlation = np.fft.ifft2(spectrum / np.maximum(np.abs(spectrum), 1e-9)).real[0]
    col = int(np.argmax(correlation))
    size = correlation.size
    left, centre, right = correlation[(col - 1) % size], correlation[col], correlation[(col + 1) % size]
    curvature = left - 2 * centre + right
    offset = 0.5 * (left - right) / curvature if curvature < 0 else 0.0
    shift = col + offset
    return float(shift - size if shift > size / 2 else shift)


def _grey(frame: np.ndarray) -> np.ndarray:
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frames must be (H, W, 3), got shape {frame.shape}")
    return frame.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def estimate_yaw_change(frame_a: np.ndarray, frame_b: np.ndarray, config: DriveConfig) -> float:
    """Heading change in radians from frame_a to frame_b (uint8 (H, W, 3) each), positive for a left turn,
    which shifts the view to the right; from the horizontal shift of the sky and skyline (at infinity,
    so they move with the heading only), resampled to equal angles so that the shift is the same everywhere.
    """
    grey_a, grey_b = _grey(frame_a), _grey(frame_b)
    rows = slice(0, max(int(config.horizon_row), 1))
    half_fov = math.radians(config.fov_degrees) / 2
    angles = np.linspace(-half_fov, half_fov, config.width, endpoint=False) + half_fov / config.width
    columns = config.width / 2 + config.focal * np.tan(angles) - 0.5  # pixel-centre coordinates
    window = np.hanning(config.width)  # soften the side edges through which the scene enters
    strips = []
    for grey in (grey_a, grey_b):
        strip = np.stack([np.interp(columns, np.arange(grey.shape[1]), row) for row in grey[rows]])
        strips.append((strip - strip.mean()) * window)
    return _phase_correlation_peak(*strips) * (angles[1] - angles[0])


def _longest_run(row: np.ndarray) -> tuple[int, int] | None:
    """(start, end) of the longest run of True in a 1-D bool array (end exclusive); None when all False."""
    edges = np.diff(np.concatenate([[0], row.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    if starts.size == 0:
        return None
    longest = int(np.argmax(ends - starts))
    return int(starts[longest]), int(ends[longest])


def estimate_road_heading(frame: np.ndarray, config: DriveConfig, grass_greenness: float = 12.0) -> float:
    """The car's heading relative to the road (rad, left positive, 0 along it) in one uint8 (H, W, 3) frame;
    nan when too little of the road's edges is in view.

    Pixels of the ground rows nearer than the fog distance are road where green, blurred 3x3, exceeds the
    mean of red and blue by less than `grass_greenness` (grass ~70 near, ~30 at the fog distance; asphalt,
    paint and poles ~0) and that are not darker than asphalt (near poles are). In each row the longest road
    run at least 1 m wide (poles are 0.3 m) gives the road's left and right edges where they lie inside the
    image; back-projected onto the ground they are two parallel lines whose common slope is the tangent of
    the heading, whatever the car's place across the road. The road is wide and drawn coarse, so this stays
    measurable where the skyline that `estimate_yaw_change` reads is a few blurred pixels (32 x 32 frames,
    generated ones especially).
    """
    c = config
    if frame.shape != (c.height, c.width, 3):
        raise ValueError(f"frame must be (H, W, 3) = ({c.height}, {c.width}, 3), got shape {frame.shape}")
    first = int(np.ceil(c.horizon_row - 0.5))
    ground = frame[first:].astype(np.float32)
    greenness = _smooth(ground[..., 1] - 0.5 * (ground[..., 0] + ground[..., 2]))
    is_road = (greenness < grass_greenness) & (_smooth(ground.mean(axis=-1)) > _DARKEST_ROAD)
    ahead = c.focal * c.camera_height / (np.arange(first, c.height) + 0.5 - c.horizon_row)
    design, right = [], []  # rows of [ahead, is left edge, is right edge] and the edge's metres to the right
    for row in np.flatnonzero(ahead < c.fog_distance):
        run = _longest_run(is_road[row])
        if run is None or (run[1] - run[0]) / c.focal * ahead[row] < _MIN_ROAD_RUN:
            continue
        for side, column in enumerate(run):
            if 0 < column < c.width:
                design.append([ahead[row], side == 0, side == 1])
                right.append((column - c.width / 2) / c.focal * ahead[row])
    design_matrix = np.array(design, dtype=np.float64).reshape(-1, 3)
    used = [0] + [side for side in (1, 2) if design_matrix[:, side].any()]
    # More points than unknowns puts one edge in two rows (an edge shows once per row), which fixes the slope.
    if len(right) <= len(used):
        return float("nan")
    slope = np.linalg.lstsq(design_matrix[:, used], np.array(right), rcond=None)[0][0]
    return float(math.atan(slope))


def _bilinear(image: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Sample a (H, W) image at fractional pixel-index coordinates (inside the image)."""
    top, left = np.floor(rows).astype(np.int64), np.floor(cols).astype(np.int64)
    bottom, right = np.minimum(top + 1, image.shape[0] - 1), np.minimum(left + 1, image.shape[1] - 1)
    down, across = rows - top, cols - left
    upper = image[top, left] * (1 - across) + image[top, right] * across
    lower = image[bottom, left] * (1 - across) + image[bottom, right] * across
    return upper * (1 - down) + lower * down


def _smooth(image: np.ndarray) -> np.ndarray:
    """3x3 binomial blur (edges repeated), so that the resampling blur matters less against sharp edges."""
    padded = np.pad(image, 1, mode="edge")
    rows = padded[:-2] * 0.25 + padded[1:-1] * 0.5 + padded[2:] * 0.25
    return rows[:, :-2] * 0.25 + rows[:, 1:-1] * 0.5 + rows[:, 2:] * 0.25


def _row_standardize(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Zero mean, unit spread per row over the valid entries (R, W): fog and lighting are affine per row."""
    count = np.maximum(valid.sum(axis=1, keepdims=True), 1)
    mean = np.where(valid, values, 0).sum(axis=1, keepdims=True) / count
    centred = np.where(valid, values - mean, 0)
    return centred / np.maximum(np.sqrt((centred**2).sum(axis=1, keepdims=True) / count), 1e-6)


def estimate_forward_motion(
    frame_a: np.ndarray,
    frame_b: np.ndarray,
    config: DriveConfig,
    max_motion: float = 4.0,
    step: float = 0.1,
    max_distance: float = 15.0,
) -> float:
    """Metres the camera moved forward from frame_a to frame_b (uint8 (H, W, 3) each).

    Tries each motion d in [-max_motion, max_motion]: warps frame_a's ground by d and by the measured yaw
    change into frame_b's view (flat ground, known camera) and keeps the d whose warp matches frame_b's
    ground rows up to max_distance best (rows standardized, so fog does not favour d = 0).
    """
    c = config
    yaw = estimate_yaw_change(frame_a, frame_b, c)
    grey_a, grey_b = _smooth(_grey(frame_a)), _smooth(_grey(frame_b))
    first = int(np.ceil(c.horizon_row - 0.5)) + 1
    rows = np.arange(first, c.height)
    ahead = c.focal * c.camera_height / (rows + 0.5 - c.horizon_row)
    rows, ahead = rows[ahead <= max_distance], ahead[ahead <= max_distance]
    if rows.size < 4:
        raise ValueError(f"too few ground rows within {max_distance} m to measure motion at height {c.height}")
    right = (np.arange(c.width) + 0.5 - c.width / 2) / c.focal * ahead[:, None]  # (R, W) metres, frame_b
    # Half a step off zero: the identity warp alone would skip interpolation's blur and win unfairly.
    candidates = np.arange(-max_motion, max_motion, step) + step / 2
    errors = np.full(candidates.size, np.inf)
    for index, motion in enumerate(candidates):
        # frame_b's camera is `motion` ahead of frame_a's along its own heading, turned left by `yaw`.
        along = (ahead + motion)[:, None]
        ahead_a = along * math.cos(yaw) + right * math.sin(yaw)
        right_a = right * math.cos(yaw) - along * math.sin(yaw)
        safe = np.maximum(ahead_a, 1e-3)
        source_rows = c.horizon_row + c.focal * c.camera_height / safe - 0.5
        source_cols = c.width / 2 + c.focal * right_a / safe - 0.5
        valid = (ahead_a > 0) & (source_rows >= first) & (source_rows <= c.height - 1)
        valid &= (source_cols >= 0) & (source_cols <= c.width - 1)
        if valid.mean() < 0.5:
            continue
        predicted = np.zeros(valid.shape)
        predicted[valid] = _bilinear(grey_a, source_rows[valid], source_cols[valid])
        difference = _row_standardize(predicted, valid) - _row_standardize(grey_b[rows], valid)
        errors[index] = np.mean(difference[valid] ** 2)
    best = int(np.argmin(errors))
    if 0 < best < candidates.size - 1 and np.all(np.isfinite(errors[best - 1 : best + 2])):
        left, centre, right_error = errors[best - 1 : best + 2]
        curvature = left - 2 * centre + right_error
        if curvature > 0:
            return float(candidates[best] + 0.5 * (left - right_error) / curvature * step)
    return float(candidates[best])


class DriveDataset(WorldDataset):
    """Torch dataset: sample i is the drive clip of seeds[i] with the seed's actions (N, 2)."""

    def __init__(self, config: DriveConfig | None = None, seeds: Sequence[int] = range(1000)) -> None:
        super().__init__(DriveWorld(config), seeds)
