"""ReVOS metrics, numerically identical to the authors' evaluator (quirks included).

Per expression, each metric is a per-frame value averaged over every frame listed for the
video (absent-target frames included):
* ground truth = uint8 SUM of the expression's annotation masks (overlaps give 2);
* predictions are 8-bit grayscale PNGs, never thresholded: J and F use nonzero as
  foreground, A and R use the raw values;
* J = IoU (both empty → 1); F = DAVIS boundary F with a disk tolerance of
  ceil(0.008 · hypot(H, W)) px (both boundaries empty → 1, one empty → 0);
* A = fraction of pixels where summed gt equals the raw prediction (so 0/255 PNGs score
  below 100 even when perfect);
* R = max(0, 1 − neg / (pos + 1e-6)), neg = Σ (1 − gt)·pred in uint8 arithmetic
  (wrap-around included), pos = foreground pixel count.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_dilation


def region_j(gt: np.ndarray, pred: np.ndarray) -> float:
    """IoU of the nonzero pixels; 1 when both are empty."""
    g, p = gt.astype(bool), pred.astype(bool)
    union = np.sum(g | p)
    return 1.0 if np.isclose(union, 0) else float(np.sum(g & p) / union)


def boundary_map(seg: np.ndarray) -> np.ndarray:
    """1-px boundaries: pixels that differ from their right, lower or lower-right neighbour."""
    seg = seg.astype(bool)
    e, s, se = np.zeros_like(seg), np.zeros_like(seg), np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def disk(radius: float) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    x, y = np.meshgrid(r, r)
    return (x**2 + y**2) <= radius**2


def boundary_f(gt: np.ndarray, pred: np.ndarray, bound_th: float = 0.008) -> float:
    bound_pix = bound_th if bound_th >= 1 else np.ceil(bound_th * np.linalg.norm(pred.shape))
    fg_b, gt_b = boundary_map(pred), boundary_map(gt)
    kernel = disk(bound_pix)
    fg_dil = binary_dilation(fg_b, structure=kernel)
    gt_dil = binary_dilation(gt_b, structure=kernel)
    n_fg, n_gt = np.sum(fg_b), np.sum(gt_b)
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        precision = np.sum(fg_b & gt_dil) / float(n_fg)
        recall = np.sum(gt_b & fg_dil) / float(n_gt)
    return 0.0 if precision + recall == 0 else float(2 * precision * recall / (precision + recall))


def accuracy(gt: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean(gt == pred))


def robustness(gt: np.ndarray, pred: np.ndarray, foreground: np.ndarray) -> float:
    neg = ((1 - gt) * pred).sum()  # uint8 arithmetic: 1 - 2 wraps to 255, products wrap mod 256
    pos = foreground.sum()
    return max(1 - neg / (pos + 1e-6), 0.0)


def expression_scores(gt: np.ndarray, pred: np.ndarray, foreground: np.ndarray) -> tuple[float, ...]:
    """Mean J, F, A, R over frames for uint8 stacks `[T, H, W]`."""
    j = np.mean([region_j(g, p) for g, p in zip(gt, pred)])
    f = np.mean([boundary_f(g, p) for g, p in zip(gt, pred)])
    a = np.mean([accuracy(g, p) for g, p in zip(gt, pred)])
    r = np.mean([robustness(g, p, fg) for g, p, fg in zip(gt, pred, foreground)])
    return j, f, a, r


def rounded(x) -> float:
    """round(100·x, 2) the way the authors' numpy floats round."""
    return float(np.round(100 * np.float64(x), 2))
