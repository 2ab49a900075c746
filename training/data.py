"""Procedural shapes dataset with exact ground truth.

A picture is described by a *spec* (a plain dict), rendered with PIL at 4x and
downsampled (anti-aliased). Everything is deterministic from a seed.

    spec = {"bg": "white",
            "shapes": [{"kind": "circle", "color": "red", "size": "small",
                        "pos": "left", "cx": 14.2, "cy": 30.0, "r": 8.0,
                        "bbox": (x0, y0, x1, y1)}, ...]}

Public helpers reused by the app / tests / evaluation:
    sample_spec(rng, holdout=False, ...) -> spec
    caption(spec) -> str
    render(spec, outline=False) -> PIL.Image (64x64 RGB)
    make_dataset(n, seed, ...) -> (uint8 tensor N,64,64,3, captions, specs)

Run `python -m training.data` to write a preview grid to runs/data_preview.png.
"""
import argparse
import math
import random

import numpy as np
from PIL import Image, ImageDraw

# ----------------------------------------------------------------------------- grammar
IMAGE_SIZE = 64
SUPERSAMPLE = 4
SHAPES = ["circle", "square", "triangle", "star"]
COLORS = {
    "red": (220, 40, 40),
    "orange": (255, 140, 0),
    "yellow": (250, 220, 30),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "purple": (140, 50, 180),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
COLOR_NAMES = list(COLORS)
SIZES = {"small": (6.5, 8.5), None: (10.0, 12.5), "large": (15.5, 18.5)}  # radius in px
POSITIONS = ["left", "right", "top", "bottom", "center"]
POSITION_PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top",
                    "bottom": "at the bottom", "center": "in the center"}
# (shape, colour, background) combos never seen in training, used only for evaluation
HOLDOUT = [
    ("star", "red", "blue"), ("circle", "green", "white"), ("square", "yellow", "purple"),
    ("triangle", "blue", "orange"), ("star", "white", "black"), ("circle", "purple", "yellow"),
    ("square", "orange", "green"), ("triangle", "black", "white"), ("star", "yellow", "green"),
    ("circle", "blue", "red"),
]
HOLDOUT_SET = set(HOLDOUT)
STYLE_WORD = "outlined"          # LoRA trigger word
EXTRA_WORDS = ["outlined", "sketch", "outline", "style", "picture", "of", "with"]
GRAMMAR_WORDS = (["a", "an", "and", "on", "the", "at", "in", "background"] + SHAPES + COLOR_NAMES
                 + ["small", "large"] + POSITIONS)


def is_holdout(spec):
    return any((s["kind"], s["color"], spec["bg"]) in HOLDOUT_SET for s in spec["shapes"])


# ----------------------------------------------------------------------------- sampling
def _place(rng, pos, r):
    lo, hi = r + 2.0, IMAGE_SIZE - r - 2.0
    c = IMAGE_SIZE / 2
    if pos is None:
        return rng.uniform(lo, hi), rng.uniform(lo, hi)
    band = (lambda a, b: rng.uniform(max(lo, a), min(hi, max(a, b))))
    if pos == "left":
        return band(lo, 0.34 * IMAGE_SIZE), band(0.30 * IMAGE_SIZE, 0.70 * IMAGE_SIZE)
    if pos == "right":
        return band(0.66 * IMAGE_SIZE, hi), band(0.30 * IMAGE_SIZE, 0.70 * IMAGE_SIZE)
    if pos == "top":
        return band(0.30 * IMAGE_SIZE, 0.70 * IMAGE_SIZE), band(lo, 0.34 * IMAGE_SIZE)
    if pos == "bottom":
        return band(0.30 * IMAGE_SIZE, 0.70 * IMAGE_SIZE), band(0.66 * IMAGE_SIZE, hi)
    if pos == "center":
        return c + rng.uniform(-3, 3), c + rng.uniform(-3, 3)
    raise ValueError(pos)


def _bbox(cx, cy, r):
    return (cx - r, cy - r, cx + r, cy + r)


def _overlap(a, b, gap=2.0):
    return not (a[2] + gap < b[0] or b[2] + gap < a[0] or a[3] + gap < b[1] or b[3] + gap < a[1])


def sample_spec(rng, holdout=False, n_shapes=None, p_size=0.5, p_pos=0.5, p_two=0.35):
    """Sample a random spec. holdout=False never yields a held-out (shape, colour, bg)
    combo; holdout=True always contains at least one (the first shape)."""
    while True:
        bg = rng.choice(COLOR_NAMES)
        n = n_shapes or (2 if rng.random() < p_two else 1)
        shapes = []
        for i in range(n):
            if holdout and i == 0:
                kind, color, bg_h = rng.choice([h for h in HOLDOUT])
                if bg_h != bg:
                    bg = bg_h
            else:
                kind = rng.choice(SHAPES)
                color = rng.choice([c for c in COLOR_NAMES if c != bg])
            size = rng.choice(["small", "large"]) if rng.random() < p_size else None
            pos = rng.choice(POSITIONS) if rng.random() < p_pos else None
            shapes.append({"kind": kind, "color": color, "size": size, "pos": pos})
        if holdout and any(s["color"] == bg for s in shapes):
            continue
        if n == 2:
            p = [s["pos"] for s in shapes]
            if p[0] is not None and p[0] == p[1]:
                continue
        spec = {"bg": bg, "shapes": shapes}
        if not holdout and is_holdout(spec):
            continue
        if _layout(rng, spec):
            return spec


def _layout(rng, spec, tries=50):
    for _ in range(tries):
        boxes = []
        ok = True
        for s in spec["shapes"]:
            r = rng.uniform(*SIZES[s["size"]])
            cx, cy = _place(rng, s["pos"], r)
            b = _bbox(cx, cy, r)
            if any(_overlap(b, o) for o in boxes):
                ok = False
                break
            boxes.append(b)
            s.update(cx=cx, cy=cy, r=r)
        if ok:
            for s, b in zip(spec["shapes"], boxes):
                s["bbox"] = b
            return True
    return False


def caption(spec, style=None):
    parts = []
    for s in spec["shapes"]:
        words = [s["size"]] if s["size"] else []
        words += [s["color"], s["kind"]]
        art = "an" if words[0][0] in "aeiou" else "a"
        if style and not parts:
            words = [style] + words
            art = "an" if style[0] in "aeiou" else "a"
        phrase = " ".join([art] + words)
        if s["pos"]:
            phrase += " " + POSITION_PHRASES[s["pos"]]
        parts.append(phrase)
    art = "an" if spec["bg"][0] in "aeiou" else "a"
    return " and ".join(parts) + f" on {art} {spec['bg']} background"


# ----------------------------------------------------------------------------- rendering
def shape_polygon(kind, cx, cy, r):
    if kind == "square":
        h = r * 0.88
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if kind == "triangle":
        return [(cx, cy - r), (cx + r * 0.98, cy + r * 0.8), (cx - r * 0.98, cy + r * 0.8)]
    if kind == "star":
        pts = []
        for i in range(10):
            a = -math.pi / 2 + i * math.pi / 5
            rr = r if i % 2 == 0 else r * 0.45
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a) + r * 0.1))
        return pts
    raise ValueError(kind)


def render(spec, outline=False, size=IMAGE_SIZE):
    """Render a spec to a PIL RGB image. outline=True draws a thick black outline
    (white outline on black shapes / black backgrounds get a black outline anyway)."""
    S = SUPERSAMPLE
    k = S * size / IMAGE_SIZE
    img = Image.new("RGB", (size * S, size * S), COLORS[spec["bg"]])
    d = ImageDraw.Draw(img)
    for s in spec["shapes"]:
        cx, cy, r = s["cx"] * k, s["cy"] * k, s["r"] * k
        fill = COLORS[s["color"]]
        ol = None
        w = 0
        if outline:
            ol = (0, 0, 0) if s["color"] != "black" else (245, 245, 245)
            w = int(round(3.0 * k))  # thick enough to read at 64x64
        if s["kind"] == "circle":
            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill, outline=ol, width=w)
        else:
            pts = shape_polygon(s["kind"], cx, cy, r)
            d.polygon(pts, fill=fill)
            if outline:
                d.line(pts + [pts[0], pts[1]], fill=ol, width=w, joint="curve")
    return img.resize((size, size), Image.LANCZOS if S > 1 else Image.NEAREST)


# ----------------------------------------------------------------------------- datasets
def _render_chunk(args):
    seed, n, holdout, outline, kw = args
    rng = random.Random(seed)
    imgs = np.zeros((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    caps, specs = [], []
    for i in range(n):
        spec = sample_spec(rng, holdout=holdout, **kw)
        imgs[i] = np.asarray(render(spec, outline=outline))
        caps.append(caption(spec, style=STYLE_WORD if outline else None))
        specs.append(spec)
    return imgs, caps, specs


def make_dataset(n, seed, holdout=False, outline=False, progress=False, chunk=0, workers=1, **kw):
    """Returns (uint8 np.ndarray [n,64,64,3], captions list, specs list).

    chunk=0: one random stream seeded by `seed` (how the earlier datasets were made). chunk=K:
    chunks of K pictures, chunk k seeded by (seed, k), rendered by `workers` processes; the
    result does not depend on the number of workers."""
    chunk = chunk or max(n, 1)
    jobs = [(seed if k == 0 else f"{seed}/{k}", min(chunk, n - k * chunk), holdout, outline, kw)
            for k in range((n + chunk - 1) // chunk)]
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp
        with mp.get_context("fork").Pool(workers) as pool:
            parts = pool.map(_render_chunk, jobs)
    else:
        parts = [_render_chunk(job) for job in jobs]
    if progress:
        print(f"rendered {n} pictures", flush=True)
    if not parts:
        return np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8), [], []
    return (np.concatenate([p[0] for p in parts]), [c for p in parts for c in p[1]],
            [s for p in parts for s in p[2]])


def to_tensor(imgs_uint8):
    """uint8 [N,H,W,3] numpy -> float tensor [N,3,H,W] in [-1,1]."""
    import torch
    x = torch.from_numpy(np.ascontiguousarray(imgs_uint8)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def grid(images, cols, scale=1):
    w, h = images[0].size
    rows = (len(images) + cols - 1) // cols
    g = Image.new("RGB", (cols * w * scale, rows * h * scale), (128, 128, 128))
    for i, im in enumerate(images):
        g.paste(im.resize((w * scale, h * scale), Image.NEAREST), ((i % cols) * w * scale, (i // cols) * h * scale))
    return g


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/data_preview.png")
    a = ap.parse_args()
    imgs, caps, _ = make_dataset(a.n, a.seed)
    _, caps2, _ = make_dataset(8, a.seed, outline=True)
    ims = [Image.fromarray(x) for x in imgs] + [render(s, outline=True) for s in make_dataset(8, a.seed)[2]]
    grid(ims, 8, 3).save(a.out)
    for c in caps[:12] + caps2[:2]:
        print(c)
