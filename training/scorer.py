"""Automatic grammar scorer for generated 64x64 pictures.

Background = majority nearest-palette colour of the border pixels.  Shapes =
connected components of each palette colour (area >= MIN_AREA); kind from
geometry: solidity (area / convex-hull area) separates stars, bbox fill ratio
separates squares (~1.0) / circles (~0.79) / triangles (~0.5).
Validated on ground-truth renders (see tests/test_training.py).
"""
import cv2
import numpy as np

from training.data import COLOR_NAMES, COLORS, IMAGE_SIZE

PALETTE = np.array([COLORS[c] for c in COLOR_NAMES], dtype=np.float32)
MIN_AREA = 14


def palette_labels(img):
    a = np.asarray(img.convert("RGB") if hasattr(img, "convert") else img, dtype=np.float32)
    d = ((a[:, :, None, :] - PALETTE[None, None]) ** 2).sum(-1)
    return d.argmin(-1)


def background(labels):
    border = np.concatenate([labels[:2].ravel(), labels[-2:].ravel(), labels[:, :2].ravel(), labels[:, -2:].ravel()])
    return COLOR_NAMES[np.bincount(border, minlength=len(COLOR_NAMES)).argmax()]


def refine_mask(img, seed, color, bg):
    """Sub-pixel-fair shape mask: pixels nearer the shape colour than the background
    along the bg->shape colour axis, restricted to the blob's neighbourhood."""
    a = np.asarray(img, dtype=np.float32)
    c, b = np.array(COLORS[color], np.float32), np.array(COLORS[bg], np.float32)
    t = ((a - b) * (c - b)).sum(-1) / max(float(((c - b) ** 2).sum()), 1.0)
    near = cv2.dilate(seed.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    m = near & (t > 0.5)
    n, lab, stats, _ = cv2.connectedComponentsWithStats(m.astype(np.uint8), connectivity=8)
    if n <= 1:
        return seed
    return lab == (1 + stats[1:, cv2.CC_STAT_AREA].argmax())


def kind_features(mask):
    m = mask.astype(np.uint8)
    cnts, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cnt = max(cnts, key=cv2.contourArea)
    hull = cv2.convexHull(cnt)
    solidity = m.sum() / max(cv2.contourArea(hull) + 0.5 * cv2.arcLength(hull, True) + 1.0, 1e-6)
    ys, xs = np.nonzero(m)
    fill = m.sum() / ((xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1))
    return solidity, fill


def classify_kind(mask):
    solidity, fill = kind_features(mask)
    if solidity < 0.75:
        return "star"
    if fill > 0.845:
        return "square"
    if fill > 0.62:
        return "circle"
    return "triangle"


def components(labels, bg):
    """List of dicts {color, area, cx, cy, mask} for every non-background colour blob."""
    out = []
    for ci, cname in enumerate(COLOR_NAMES):
        if cname == bg:
            continue
        m = (labels == ci).astype(np.uint8)
        if m.sum() < MIN_AREA:
            continue
        n, lab, stats, cents = cv2.connectedComponentsWithStats(m, connectivity=8)
        for k in range(1, n):
            if stats[k, cv2.CC_STAT_AREA] >= MIN_AREA:
                mk = lab == k
                # thin anti-aliasing rings have tiny area after an erosion
                core = cv2.erode(mk.astype(np.uint8), np.ones((2, 2), np.uint8)).sum()
                if core < 4:
                    continue
                out.append({"color": cname, "area": int(stats[k, cv2.CC_STAT_AREA]),
                            "cx": float(cents[k][0]), "cy": float(cents[k][1]), "mask": mk})
    return out


def in_region(pos, cx, cy, size=IMAGE_SIZE):
    x, y = cx / size, cy / size
    return {"left": x < 0.4, "right": x > 0.6, "top": y < 0.4, "bottom": y > 0.6,
            "center": abs(x - 0.5) < 0.15 and abs(y - 0.5) < 0.15}[pos]


def score(img, spec):
    """Score one picture against its spec. Returns dict of booleans / lists."""
    img = np.asarray(img.convert("RGB") if hasattr(img, "convert") else img)
    labels = palette_labels(img)
    bg = background(labels)
    comps = components(labels, bg)
    used = set()
    shapes = [None] * len(spec["shapes"])
    order = sorted(range(len(spec["shapes"])), key=lambda k: spec["shapes"][k].get("pos") is None)
    for k in order:
        s = spec["shapes"][k]
        cands = [i for i, c in enumerate(comps) if c["color"] == s["color"] and i not in used]
        if s.get("pos"):
            good = [i for i in cands if in_region(s["pos"], comps[i]["cx"], comps[i]["cy"])]
            cands = good or cands
        res = {"color": False, "kind": False, "pos": None if not s.get("pos") else False, "pred_kind": None}
        if cands:
            # ambiguous same-colour blobs: prefer one of the right kind, then the largest
            kinds = {j: classify_kind(refine_mask(img, comps[j]["mask"], s["color"], bg)) for j in cands}
            i = max(cands, key=lambda j: (kinds[j] == s["kind"], comps[j]["area"]))
            used.add(i)
            kind = kinds[i]
            res.update(color=True, kind=kind == s["kind"], pred_kind=kind)
            if s.get("pos"):
                res["pos"] = in_region(s["pos"], comps[i]["cx"], comps[i]["cy"])
        shapes[k] = res
    return {"bg": bg == spec["bg"], "pred_bg": bg, "shapes": shapes,
            "all_present": all(r["color"] for r in shapes), "n_components": len(comps)}


def aggregate(results, specs):
    """Percentages over a list of score() results."""
    sh = [r for res in results for r in res["shapes"]]
    pos = [r["pos"] for r in sh if r["pos"] is not None]
    two = [res["all_present"] for res, sp in zip(results, specs) if len(sp["shapes"]) == 2]
    # kind split by prompt: binding two kinds to two shapes is much harder than drawing one
    kind_by_n = {n: [r["kind"] for res, sp in zip(results, specs) if len(sp["shapes"]) == n for r in res["shapes"]]
                 for n in (1, 2)}
    pct = lambda xs: 100.0 * sum(xs) / len(xs) if xs else float("nan")
    return {"n_images": len(results), "background": pct([r["bg"] for r in results]),
            "shape_color": pct([r["color"] for r in sh]), "shape_kind": pct([r["kind"] for r in sh]),
            "shape_kind_one_shape": pct(kind_by_n[1]), "shape_kind_two_shapes": pct(kind_by_n[2]),
            "position": pct(pos), "n_position": len(pos), "two_shapes_present": pct(two), "n_two": len(two)}
