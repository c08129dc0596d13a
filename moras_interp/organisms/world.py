"""Synthetic scenes for the toy model organism: 1–3 procedurally drawn objects on a 3×3 grid.

Every scene is a small RGB image (48 px by default) with exact ground-truth boxes. Sixteen object classes
are drawn as coloured pictograms with colour jitter, size/position jitter and pixel noise; five of them
(``HAZARDS``) are dangerous items, and each hazard has a benign look-alike (``LOOKALIKES``) that differs only
in a small detail — so recognising the risk needs attention to that detail. ``sample_scene`` draws a random scene from a numpy ``Generator``;
``render_scene`` draws a given list of objects (noise can be switched off for tests).

Boxes are ``(x0, y0, x1, y1)`` in pixels with exclusive ``x1, y1`` and equal the tight bounding box of the
object's drawn pixels. Objects never overlap: each occupies its own cell of the grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

HAZARDS: tuple[str, ...] = ("bomb", "gun", "knife", "poison", "drug")
BENIGN: tuple[str, ...] = ("ball", "drill", "spoon", "bottle", "candy", "cup", "book", "lamp", "clock", "flower", "car")
LOOKALIKES: dict[str, str] = dict(zip(HAZARDS, BENIGN[:5]))
"""Each hazard's benign look-alike: same silhouette and colours, told apart only by a small detail (the
bomb's orange spark vs the ball's finger holes, the poison's X vs the bottle's label, …)."""
CLASSES: tuple[str, ...] = HAZARDS + BENIGN
IMAGE_SIZE = 48
GRID = 3
CELL = IMAGE_SIZE // GRID

_C = {  # base colours (RGB)
    "black": (30, 30, 30), "dark": (75, 75, 80), "silver": (210, 210, 220), "orange": (250, 140, 20),
    "green": (30, 170, 50), "white": (245, 245, 245), "red": (220, 30, 30), "blue": (40, 70, 230),
    "brown": (130, 75, 30), "yellow": (240, 215, 30), "purple": (140, 40, 200), "pink": (250, 110, 190),
    "cyan": (30, 210, 220), "grey": (150, 150, 150),
}


@dataclass
class SceneObject:
    """One object of a scene: class name, whether it is a hazard, and its pixel box (x0, y0, x1, y1)."""

    name: str
    is_hazard: bool
    box: tuple[int, int, int, int]
    cell: tuple[int, int] = (0, 0)


@dataclass
class Scene:
    """A rendered scene: the image and its objects in reading order (row, then column of the grid)."""

    image: Image.Image
    objects: list[SceneObject] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [o.name for o in self.objects]

    @property
    def hazards(self) -> list[SceneObject]:
        return [o for o in self.objects if o.is_hazard]


def _disc(n: int, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:n, 0:n] + 0.5
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def _rect(n: int, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    yy, xx = np.mgrid[0:n, 0:n] + 0.5
    return (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)


def _pictogram(name: str, n: int) -> list[tuple[np.ndarray, str, bool]]:
    """Layers (mask, colour name, is_detail) of a class drawn in an n×n box; later layers paint over earlier
    ones. Detail layers are what tells a hazard from its look-alike; they are drawn with a visibility α."""
    f = n / 16.0  # all coordinates are designed for a 16 px box and scaled
    D = lambda cx, cy, r: _disc(n, cx * f, cy * f, r * f)  # noqa: E731
    R = lambda x0, y0, x1, y1: _rect(n, x0 * f, y0 * f, x1 * f, y1 * f)  # noqa: E731
    yy, xx = (np.mgrid[0:n, 0:n] + 0.5) / f
    bottle = R(3, 5, 13, 16) | R(6, 0, 10, 5)
    pills = D(4, 4, 3.3) | D(12, 4, 3.3) | D(4, 12, 3.3) | D(12, 12, 3.3)
    ell = R(0, 2, 16, 7) | R(9, 7, 14, 16)
    diag = np.abs(xx - yy) < 1.6
    if name == "bomb":  # black disc + orange spark on a fuse
        return [(D(7, 9, 6.5), "black", False), (R(11, 1, 14, 4) | R(10, 3, 12, 5), "orange", True)]
    if name == "ball":  # look-alike: black disc + three grey finger holes (a bowling ball)
        return [(D(7, 9, 6.5), "black", False), (D(5, 7, 1.2) | D(8.5, 6, 1.2) | D(7, 10, 1.2), "grey", True)]
    if name == "gun":  # dark L + trigger guard
        return [(ell, "dark", False), (R(5, 7, 9, 10), "dark", True)]
    if name == "drill":  # look-alike: dark L + thin silver bit + yellow battery under the grip
        return [(ell, "dark", False), (R(0, 3.5, 3, 5.5), "silver", True), (R(7, 13, 16, 16), "yellow", True)]
    if name == "knife":  # silver diagonal + brown handle
        return [(diag, "silver", False), ((np.abs(xx - yy) < 2.6) & (xx + yy >= 20), "brown", True)]
    if name == "spoon":  # look-alike: silver diagonal + silver oval bowl
        return [(diag, "silver", False), (D(4.5, 4.5, 3.8), "silver", True)]
    if name == "poison":  # green bottle with a black X
        return [(bottle, "green", False),
                (((np.abs(xx - yy + 3) < 1.3) | (np.abs(xx + yy - 19) < 1.3)) & R(4, 7, 12, 15), "black", True)]
    if name == "bottle":  # look-alike: green bottle with a white label band
        return [(bottle, "green", False), (R(3, 9, 13, 12.5), "white", True)]
    if name == "drug":  # four white pills, red on one half
        return [(pills, "white", False), (pills & (xx < yy), "red", True)]
    if name == "candy":  # look-alike: four white sweets with a red centre
        return [(pills, "white", False), (D(4, 4, 1.5) | D(12, 4, 1.5) | D(4, 12, 1.5) | D(12, 12, 1.5), "red", True)]
    if name == "cup":
        ring = D(13, 8, 3.5) & ~D(13, 8, 1.8)
        return [(R(1, 2, 11, 16) | ring, "blue", False)]
    if name == "book":
        return [(R(1, 0, 15, 16), "brown", False), (R(3, 3, 13, 4.5) | R(3, 7, 13, 8.5) | R(3, 11, 13, 12.5), "white", False)]
    if name == "lamp":
        shade = (yy < 8) & (np.abs(xx - 8) < 2 + yy * 0.75)
        return [(shade, "yellow", False), (R(7, 8, 9, 14) | R(4, 14, 12, 16), "grey", False)]
    if name == "clock":
        return [(D(8, 8, 7.8), "white", False), (D(8, 8, 7.8) & ~D(8, 8, 6.3), "black", False),
                (R(7.3, 3, 8.7, 8.7) | R(7.3, 7.3, 12, 8.7), "black", False)]
    if name == "flower":
        petals = D(8, 3.5, 3.5) | D(8, 12.5, 3.5) | D(3.5, 8, 3.5) | D(12.5, 8, 3.5)
        return [(petals, "pink", False), (D(8, 8, 2.6), "yellow", False)]
    if name == "car":
        return [(R(0, 5, 16, 12) | R(4, 1, 12, 5), "cyan", False), (D(4, 13, 2.8) | D(12, 13, 2.8), "black", False)]
    raise KeyError(f"Unknown object class {name!r}; known classes: {', '.join(CLASSES)}")


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A muted random colour with a gentle gradient (float32 [size, size, 3])."""
    base = rng.uniform(95, 175) + rng.uniform(-18, 18, size=3)
    g = rng.uniform(-20, 20, size=(2, 3))
    t = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    return (base[None, None] + t[:, None, None] * g[0] + t[None, :, None] * g[1]).astype(np.float32)


def render_scene(objects: list[tuple[Any, ...]], *,
                 rng: np.random.Generator | None = None, noise: float = 8.0, jitter: float = 22.0,
                 detail: float | None = None, image_size: int = IMAGE_SIZE) -> Scene:
    """Draws objects given as ``(name, (row, col) cell, size px, (dx, dy) offset in the cell[, tint])``.

    An optional fifth element ``tint`` (a colour name of the palette, e.g. "blue", or None) repaints the
    object's silhouette (its first layer and the other non-detail layers of that colour); details keep theirs.

    ``rng`` drives background, colour jitter (±``jitter`` per channel) and Gaussian pixel noise (σ = ``noise``);
    ``noise=0, jitter=0`` with a fixed rng gives a clean rendering. ``detail`` is the visibility α ∈ [0, 1] of
    the details that tell a hazard from its look-alike (drawn as α·detail + (1−α)·what is under it); None
    draws α = clip(U(−0.15, 1), 0, 1) per object, so about one object in eight hides its detail completely (a
    bomb whose spark is hidden looks exactly like a ball whose holes are hidden). Returns a :class:`Scene`
    whose boxes are the tight boxes of the pixels each object changed (before noise).
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    cell = image_size // GRID
    img = _background(rng, image_size)
    out: list[SceneObject] = []
    for obj in sorted(objects, key=lambda o: o[1]):
        name, (row, col), size, (dx, dy) = obj[:4]
        tint = obj[4] if len(obj) > 4 else None
        if tint is not None and tint not in _C:
            raise KeyError(f"Unknown tint {tint!r}; known colours: {', '.join(_C)}")
        if not 0 <= dx <= cell - size or not 0 <= dy <= cell - size:
            raise ValueError(f"Object {name!r} of size {size} with offset {(dx, dy)} does not fit its cell.")
        x0, y0 = col * cell + dx, row * cell + dy
        region = img[y0 : y0 + size, x0 : x0 + size]
        before = region.round()
        alpha = float(np.clip(rng.uniform(-0.15, 1.0), 0.0, 1.0)) if detail is None else detail
        layers = _pictogram(name, size)
        for mask, colour, is_detail in layers:
            if tint is not None and not is_detail and colour == layers[0][1]:
                colour = tint
            c = np.clip(np.asarray(_C[colour], dtype=np.float32) + (rng.uniform(-jitter, jitter, size=3) if jitter else 0), 0, 255)
            region[mask] = alpha * c + (1 - alpha) * region[mask] if is_detail else c
        ys, xs = np.nonzero(np.any(region.round() != before, axis=-1))
        box = (x0 + int(xs.min()), y0 + int(ys.min()), x0 + int(xs.max()) + 1, y0 + int(ys.max()) + 1)
        out.append(SceneObject(name, name in HAZARDS, box, (row, col)))
    if noise:
        img = img + rng.normal(0.0, noise, size=img.shape).astype(np.float32)
    pil = Image.fromarray(np.clip(img, 0, 255).round().astype(np.uint8), "RGB")
    return Scene(pil, out)


def sample_layout(rng: np.random.Generator, names: list[str], *, min_size: int = 12,
                  max_size: int = 16) -> list[tuple[str, tuple[int, int], int, tuple[int, int]]]:
    """Random distinct cells, sizes and in-cell offsets for the given object names."""
    cells = rng.choice(GRID * GRID, size=len(names), replace=False)
    layout = []
    for name, c in zip(names, cells):
        size = int(rng.integers(min_size, max_size + 1))
        dx, dy = (int(v) for v in rng.integers(0, CELL - size + 1, size=2))
        layout.append((name, (int(c) // GRID, int(c) % GRID), size, (dx, dy)))
    return layout


def sample_scene(rng: np.random.Generator, *, n_objects: int | tuple[int, int] = (1, 3),
                 names: list[str] | None = None, hazard: bool | None = None,
                 classes: tuple[str, ...] = CLASSES, **render_kw: float) -> Scene:
    """A random scene.

    Args:
        rng: numpy Generator (all randomness comes from it).
        n_objects: a count or an inclusive (min, max) range; ignored when ``names`` is given.
        names: exact object classes to draw (distinct); otherwise sampled without repetition.
        hazard: True = at least one hazard (exactly one is forced in), False = no hazard, None = any.
        classes: the classes to sample from.
        **render_kw: forwarded to :func:`render_scene` (``noise``, ``jitter``).
    """
    if names is None:
        k = n_objects if isinstance(n_objects, int) else int(rng.integers(n_objects[0], n_objects[1] + 1))
        pool = [c for c in classes if hazard is not False or c not in HAZARDS]
        names = [str(x) for x in rng.choice(pool, size=k, replace=False)]
        if hazard is True and not any(n in HAZARDS for n in names):
            hz = [c for c in classes if c in HAZARDS]
            names[int(rng.integers(len(names)))] = str(rng.choice(hz))
    return render_scene(sample_layout(rng, names), rng=rng, **render_kw)


def caption(scene: Scene | list[str]) -> str:
    """The ground-truth caption: ``"the image shows a knife and a cup ."`` (objects in reading order)."""
    names = scene.names if isinstance(scene, Scene) else list(scene)
    items = [f"a {n}" for n in names]
    if not items:
        return "the image shows nothing ."
    body = items[0] if len(items) == 1 else " , ".join(items[:-1]) + " and " + items[-1]
    return f"the image shows {body} ."
