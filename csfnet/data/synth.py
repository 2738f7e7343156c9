"""Deterministic synthetic micro-UAV video benchmark.

Each sequence is a real encoded video (MPEG-4 Part 2 in ``.mp4``) of 1-3 UAV silhouettes, mostly under 12 px, flying
smooth accelerated paths (entering and leaving the frame) over one of three scenes: a bright high-dynamic-range sky
with clouds, urban clutter with strong edges, or a noisy low-light night. Birds and specks distract, the camera pans
and jitters, fast targets are motion-blurred and the encoder adds compression artefacts. Annotations are written in
the public MOT (``gt/gt.txt``) or Anti-UAV (``<seq>.json``) layout, so the same ingestion code reads real data.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from csfnet.files import process_pool, replace_dir, staging_dir, worker_count

SCENES = ("sky", "urban", "night")
SHAPES = ("quad", "fixed-wing")
FORMATS = ("mot", "anti-uav")
FPS = 25
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class SynthSpec:
    """What to generate; the defaults are the quick benchmark."""

    train_videos: int = 8
    val_videos: int = 4
    frames: int = 50
    width: int = 320
    height: int = 256
    seed: int = 0
    format: str = "mot"

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"unknown annotation format {self.format!r}; choose one of {FORMATS}")
        if min(self.train_videos, self.val_videos) < 0 or self.frames < 1 or min(self.width, self.height) < 64:
            raise ValueError(f"invalid synth spec {self}: need videos >= 0, frames >= 1, width/height >= 64")


@dataclass
class _Target:
    shape: str
    size: float  # span in pixels
    pos: np.ndarray  # world coordinates of the centre
    vel: np.ndarray
    acc: np.ndarray
    heading: float
    shade: int


def generate(out: str | Path, spec: SynthSpec = SynthSpec(), workers: int | None = None) -> Path:
    """Write the benchmark to ``out/{train,val}/<sequence>/``; ``out`` appears only once complete."""
    out = Path(out)
    jobs = [("train", i) for i in range(spec.train_videos)] + [("val", i) for i in range(spec.val_videos)]
    with staging_dir(out) as tmp:
        with process_pool(worker_count(workers, len(jobs)), __name__) as pool:
            futures = [pool.submit(_write_sequence, tmp, spec, split, i) for split, i in jobs]
            for future in tqdm(futures, desc="synth videos", unit="video"):
                future.result()
        (tmp / "synth.json").write_text(json.dumps(spec.__dict__, indent=2))
        replace_dir(tmp, out)
    return out


def sequence_name(split: str, index: int) -> str:
    """Sequence folder name, unique across splits."""
    return f"uav_{split}_{index:04d}"


def _write_sequence(root: Path, spec: SynthSpec, split: str, index: int) -> None:
    cv2.setNumThreads(1)
    name = sequence_name(split, index)
    seq_dir = root / split / name
    seq_dir.mkdir(parents=True)
    rng = np.random.default_rng([spec.seed, 0 if split == "train" else 1, index])
    n_targets = 1 if spec.format == "anti-uav" else int(rng.integers(1, 4))
    writer = cv2.VideoWriter(
        str(seq_dir / f"{name}.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (spec.width, spec.height)
    )
    if not writer.isOpened():
        shutil.rmtree(seq_dir)
        raise RuntimeError("OpenCV cannot encode mp4v video; is opencv-python installed with FFmpeg?")
    boxes: list[list[tuple[int, float, float, float, float]]] = []
    try:
        for frame, frame_boxes in _render(rng, spec, n_targets):
            writer.write(frame)
            boxes.append(frame_boxes)
    finally:
        writer.release()
    if spec.format == "mot":
        _write_mot(seq_dir, boxes)
    else:
        _write_anti_uav(seq_dir / f"{name}.json", boxes)


def _write_mot(seq_dir: Path, boxes: list[list[tuple[int, float, float, float, float]]]) -> None:
    (seq_dir / "gt").mkdir()
    rows = [
        f"{f + 1},{tid + 1},{x:.2f},{y:.2f},{w:.2f},{h:.2f},1,1,1.0"
        for f, frame_boxes in enumerate(boxes)
        for tid, x, y, w, h in frame_boxes
    ]
    (seq_dir / "gt" / "gt.txt").write_text("\n".join(rows) + ("\n" if rows else ""))


def _write_anti_uav(path: Path, boxes: list[list[tuple[int, float, float, float, float]]]) -> None:
    rects = [[round(v, 2) for v in b[0][1:]] if b else [] for b in boxes]
    path.write_text(json.dumps({"exist": [int(bool(b)) for b in boxes], "gt_rect": rects}))


# --- rendering -------------------------------------------------------------------------------------------------------


def distractors(spec: SynthSpec, split: str, index: int) -> list[list[tuple[str, float, float, float, float]]]:
    """The unannotated distractors of one generated sequence, per frame: ``(kind, x, y, w, h)`` with kind ``bird``
    (the box of its drawn 'V') or ``speck`` (one pixel). Replays the sequence's random stream, so it describes
    exactly the video :func:`generate` wrote with ``spec`` (its ``synth.json``)."""
    rng = np.random.default_rng([spec.seed, 0 if split == "train" else 1, index])
    n_targets = 1 if spec.format == "anti-uav" else int(rng.integers(1, 4))
    found: list[list[tuple[str, float, float, float, float]]] = []
    for _ in _render(rng, spec, n_targets, found):
        pass
    return found


def _render(
    rng: np.random.Generator, spec: SynthSpec, n_targets: int, distractors: list | None = None
) -> Iterator[tuple[np.ndarray, list]]:
    """Yield (BGR frame, [(target id, x, y, w, h), ...]) for every frame of one sequence; append each frame's
    distractors to ``distractors`` when given (the random stream is the same either way)."""
    scene = SCENES[int(rng.integers(len(SCENES)))]
    margin = 48
    canvas = _background(rng, scene, spec.width + 2 * margin, spec.height + 2 * margin)
    pan = rng.uniform(-0.5, 0.5, 2)
    targets = [_new_target(rng, spec, scene) for _ in range(n_targets)]
    birds = [_new_target(rng, spec, scene) for _ in range(int(rng.integers(0, 4)))]
    noise_sigma = rng.uniform(6, 12) if scene == "night" else rng.uniform(1, 3)
    jpeg_quality = int(rng.integers(35, 80))  # extra compression on top of the video codec
    for t in range(spec.frames):
        cam = np.clip(margin + pan * t + rng.normal(0, 0.7, 2), 0, 2 * margin)
        x0, y0 = int(np.rint(cam[0])), int(np.rint(cam[1]))
        frame = canvas[y0 : y0 + spec.height, x0 : x0 + spec.width].astype(np.float32)
        drawn = []
        for bird in birds:
            _step(rng, bird)
            drawn.append(("bird", *_draw_bird(frame, bird, t, cam - margin)))
        drawn += [("speck", x, y, 1.0, 1.0) for x, y in _draw_specks(rng, frame, scene)]
        if distractors is not None:
            distractors.append(drawn)
        frame_boxes = []
        for tid, target in enumerate(targets):
            _step(rng, target)
            box = _draw_target(frame, target, cam - margin, scene)
            if box is not None:
                frame_boxes.append((tid, *box))
        frame += rng.normal(0, noise_sigma, frame.shape).astype(np.float32)
        frame = np.clip(frame, 0, 255).astype(np.uint8)
        _, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])  # blocking artefacts
        yield cv2.imdecode(buf, cv2.IMREAD_COLOR), frame_boxes


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    small = rng.random((max(2, h // cells), max(2, w // cells))).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _background(rng: np.random.Generator, scene: str, w: int, h: int) -> np.ndarray:
    """A static scene larger than the frame, so the camera can pan over it."""
    rows = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    if scene == "night":
        img = np.repeat(18 + 20 * rows + 10 * _smooth_noise(rng, h, w, 40)[..., None], 3, axis=2)
        img = np.ascontiguousarray(img, dtype=np.float32)
        for _ in range(int(rng.integers(3, 10))):  # city lights near the horizon
            cx, cy = int(rng.integers(0, w)), int(rng.integers(h * 2 // 3, h))
            cv2.circle(img, (cx, cy), int(rng.integers(1, 3)), (150, 200, 230), -1)
        return img
    top = np.array(rng.uniform([200, 160, 120], [255, 210, 170]), np.float32)  # BGR: blue sky
    bottom = np.array(rng.uniform([235, 225, 215], [255, 250, 245]), np.float32)
    img = top * (1 - rows) + bottom * rows
    clouds = np.clip(_smooth_noise(rng, h, w, 24) * 1.8 - 0.8, 0, 1)[..., None]
    img = img * (1 - clouds) + 250 * clouds
    sun = np.array([rng.uniform(0, w), rng.uniform(0, h / 2)])  # saturated glare: high dynamic range
    yy, xx = np.mgrid[0:h, 0:w]
    glare = np.exp(-((xx - sun[0]) ** 2 + (yy - sun[1]) ** 2) / (2 * (0.15 * w) ** 2))[..., None]
    img = np.ascontiguousarray(np.minimum(img + 120 * glare, 255), dtype=np.float32)
    if scene == "urban":
        _draw_buildings(rng, img, w, h)
    return img.astype(np.float32)


def _draw_buildings(rng: np.random.Generator, img: np.ndarray, w: int, h: int) -> None:
    x = 0
    while x < w:
        bw, bh = int(rng.integers(20, 70)), int(rng.integers(h // 4, h * 3 // 4))
        shade = float(rng.uniform(50, 170))
        cv2.rectangle(img, (x, h - bh), (x + bw, h), (shade, shade * 0.97, shade * 0.95), -1)
        cv2.rectangle(img, (x, h - bh), (x + bw, h), (shade * 0.4,) * 3, 1)  # strong edges
        for wy in range(h - bh + 6, h - 4, 9):  # window grid
            for wx in range(x + 4, x + bw - 4, 8):
                if rng.random() < 0.6:
                    v = float(rng.uniform(20, 240))
                    cv2.rectangle(img, (wx, wy), (wx + 3, wy + 4), (v, v, v), -1)
        if rng.random() < 0.3:  # antennas and cables: thin high-contrast lines
            ax = x + bw // 2
            cv2.line(img, (ax, h - bh), (ax, h - bh - int(rng.integers(8, 30))), (30, 30, 30), 1)
        x += bw + int(rng.integers(0, 6))


def _target_size(rng: np.random.Generator) -> float:
    """3-24 px span, most under 12 (log-normal around 8 px)."""
    return float(np.clip(rng.lognormal(math.log(8.0), 0.45), 3, 24))


def _new_target(rng: np.random.Generator, spec: SynthSpec, scene: str) -> _Target:
    w, h = spec.width, spec.height
    speed = rng.uniform(0.4, 3.0)
    if rng.random() < 0.3:  # enters from a side
        side = int(rng.integers(4))
        pos = [
            (-10, rng.uniform(0, h)),
            (w + 10, rng.uniform(0, h)),
            (rng.uniform(0, w), -10),
            (rng.uniform(0, w), h + 10),
        ]
        pos = np.array(pos[side], np.float64)
        direction = np.array([w / 2, h / 2]) - pos
    else:
        pos = np.array([rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.8) * h])
        direction = rng.normal(size=2)
    vel = speed * direction / (np.linalg.norm(direction) + 1e-9)
    shade = int(rng.uniform(20, 90)) if scene != "night" else int(rng.uniform(60, 110))
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    return _Target(shape, _target_size(rng), pos, vel, np.zeros(2), math.atan2(vel[1], vel[0]), shade)


def _step(rng: np.random.Generator, target: _Target) -> None:
    """Smooth accelerated motion: acceleration follows a damped random walk."""
    target.acc = 0.85 * target.acc + rng.normal(0, 0.08, 2)
    target.vel = np.clip(target.vel + target.acc, -4, 4)
    target.pos = target.pos + target.vel
    target.heading = 0.8 * target.heading + 0.2 * math.atan2(target.vel[1], target.vel[0])


def _silhouette(shape: str, size: float, heading: float) -> np.ndarray:
    """Anti-aliased alpha mask (float32 0-1) of a UAV silhouette whose span is ``size`` pixels."""
    s = size * _SUPERSAMPLE
    n = math.ceil(s * 1.5) + 4
    mask = np.zeros((n, n), np.uint8)
    c = np.array([n / 2, n / 2])
    rot = np.array([[math.cos(heading), -math.sin(heading)], [math.sin(heading), math.cos(heading)]])

    def pt(x: float, y: float) -> tuple[int, int]:
        p = c + rot @ np.array([x, y]) * s
        return int(np.rint(p[0])), int(np.rint(p[1]))

    thick = max(1, int(np.rint(0.1 * s)))
    if shape == "quad":
        for dx, dy in ((0.35, 0.35), (0.35, -0.35), (-0.35, 0.35), (-0.35, -0.35)):
            cv2.line(mask, pt(0, 0), pt(dx, dy), 255, thick)
            cv2.circle(mask, pt(dx, dy), max(1, int(np.rint(0.15 * s))), 255, -1)
        cv2.rectangle(mask, pt(-0.12, -0.12), pt(0.12, 0.12), 255, -1)
    else:  # fixed wing: fuselage, main wing, tailplane
        cv2.line(mask, pt(-0.5, 0), pt(0.5, 0), 255, max(1, int(np.rint(0.12 * s))))
        cv2.line(mask, pt(0.1, -0.5), pt(0.1, 0.5), 255, max(1, int(np.rint(0.14 * s))))
        cv2.line(mask, pt(-0.45, -0.2), pt(-0.45, 0.2), 255, thick)
    small = cv2.resize(mask, (max(1, n // _SUPERSAMPLE),) * 2, interpolation=cv2.INTER_AREA)
    return small.astype(np.float32) / 255.0


def _motion_blur(alpha: np.ndarray, vel: np.ndarray) -> np.ndarray:
    length = int(np.rint(float(np.linalg.norm(vel))))
    if length < 2:
        return alpha
    k = np.zeros((2 * length + 1, 2 * length + 1), np.float32)
    d = vel / np.linalg.norm(vel)
    cv2.line(
        k,
        (int(length - d[0] * length / 2), int(length - d[1] * length / 2)),
        (int(length + d[0] * length / 2), int(length + d[1] * length / 2)),
        1.0,
        1,
    )
    alpha = np.pad(alpha, length)
    return cv2.filter2D(alpha, -1, k / k.sum())


def _blend(frame: np.ndarray, alpha: np.ndarray, x0: int, y0: int, color: np.ndarray) -> tuple | None:
    """Alpha-blend ``color`` through ``alpha`` at (x0, y0); return the visible part of the mask and its top-left
    corner in the frame (or None)."""
    h, w = frame.shape[:2]
    ah, aw = alpha.shape
    fx0, fy0, fx1, fy1 = max(x0, 0), max(y0, 0), min(x0 + aw, w), min(y0 + ah, h)
    if fx0 >= fx1 or fy0 >= fy1:
        return None
    a = alpha[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0, None]
    frame[fy0:fy1, fx0:fx1] = frame[fy0:fy1, fx0:fx1] * (1 - a) + color * a
    return a[..., 0], fx0, fy0


def _draw_target(frame: np.ndarray, t: _Target, cam: np.ndarray, scene: str) -> tuple[float, ...] | None:
    """Draw one UAV; return its tight box (x, y, w, h) in the frame, or None when it is out of view."""
    alpha = _motion_blur(_silhouette(t.shape, t.size, t.heading), t.vel)
    ah, aw = alpha.shape
    cx, cy = t.pos - cam
    x0, y0 = int(np.rint(cx - aw / 2)), int(np.rint(cy - ah / 2))
    visible = _blend(frame, alpha, x0, y0, np.full(3, t.shade, np.float32))
    if visible is None:
        return None
    if scene == "night":  # navigation light
        lx, ly = int(np.rint(cx)), int(np.rint(cy))
        if 0 <= lx < frame.shape[1] and 0 <= ly < frame.shape[0]:
            frame[ly, lx] = (90, 90, 255)
    mask, ox, oy = visible
    ys, xs = np.nonzero(mask > 0.3)
    if len(xs) < 2:
        return None
    xs, ys = xs + ox, ys + oy
    x, y = float(xs.min()), float(ys.min())
    return x, y, float(xs.max()) + 1 - x, float(ys.max()) + 1 - y


def _draw_bird(frame: np.ndarray, bird: _Target, t: int, cam: np.ndarray) -> tuple[float, float, float, float]:
    """Flapping 'V' distractor, not annotated; returns the box (x, y, w, h) of the drawn 'V' (maybe off-frame)."""
    cx, cy = bird.pos - cam
    span = max(2.0, bird.size * 0.5)
    lift = span * (0.5 if (t // 3) % 2 else -0.2)
    pts = np.array([[cx - span, cy - lift], [cx, cy], [cx + span, cy - lift]], np.int32)
    cv2.polylines(frame, [pts], False, (40, 40, 40), 1, cv2.LINE_AA)
    (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
    return float(x0) - 1, float(y0) - 1, float(x1 - x0) + 3, float(y1 - y0) + 3  # anti-aliasing: 1 px around


def _draw_specks(rng: np.random.Generator, frame: np.ndarray, scene: str) -> list[tuple[float, float]]:
    """Flickering 1-px specks (dust, hot pixels, insects), not annotated; returns their (x, y)."""
    h, w = frame.shape[:2]
    drawn = []
    for _ in range(int(rng.integers(0, 6))):
        v = 255.0 if scene == "night" else float(rng.uniform(30, 90))
        y, x = int(rng.integers(h)), int(rng.integers(w))
        frame[y, x] = v
        drawn.append((float(x), float(y)))
    return drawn
