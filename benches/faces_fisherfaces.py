"""Fisherfaces on the `faces` preset's 8 splits of AT&T faces (issue #25).

The question: how far can a linear metric learnt from the training people go on the
people held out? Raw pixels are the report's baseline; Fisherfaces (Belhumeur,
Hespanha & Kriegman 1997: PCA of the training photos to k dimensions, then Fisher's
linear discriminant of the training people, at most people - 1 axes, compared by
cosine) is the classic answer, and the yardstick for what the Siamese network learns
beyond a linear map.

The splits are the preset's (`siamese train --preset faces --data att_faces --splits 8`
prints them as its `validation:` and `test:` lines): 30 people to fit on, 5 for
validation (which chooses k and the within-class regularisation, never the test
people), 5 for test. Photos are resized to 56x46 (PIL's bilinear, not siamese's own
resize, so raw pixels land within a few tenths of the report's figures), scaled to
[0, 1]. Every pair of the 50 test photos is scored (225 same-person, 1,000 other);
the EER is where the false-reject and false-accept rates cross.

Needs numpy and pillow; a few seconds:

    python benches/faces_fisherfaces.py path/to/att_faces
"""

import os
import sys

import numpy as np
from PIL import Image

SPLITS = [  # (validation, test), in the order of the preset's split-1 ... split-8
    ("s12 s26 s30 s4 s8", "s2 s24 s29 s7 s9"),
    ("s2 s22 s27 s3 s37", "s1 s10 s26 s40 s5"),
    ("s14 s15 s20 s27 s3", "s1 s16 s18 s36 s40"),
    ("s19 s2 s26 s34 s35", "s16 s27 s29 s37 s7"),
    ("s12 s16 s19 s22 s32", "s1 s2 s24 s37 s8"),
    ("s1 s17 s21 s22 s7", "s14 s24 s39 s5 s8"),
    ("s15 s28 s36 s40 s9", "s10 s20 s26 s30 s6"),
    ("s14 s17 s2 s29 s6", "s26 s32 s39 s7 s8"),
]
PCA_DIMS = [20, 50, 100]
REGULARISATION = [1e-3, 1e-1]  # times the mean within-class variance, added to it


def load(root):
    people = sorted(os.listdir(root), key=lambda p: int(p[1:]))
    photos = {}
    for person in people:
        files = sorted(os.listdir(os.path.join(root, person)))
        photos[person] = np.array(
            [
                np.asarray(
                    Image.open(os.path.join(root, person, f))
                    .convert("L")
                    .resize((46, 56), Image.BILINEAR),
                    np.float64,
                ).ravel()
                / 255.0
                for f in files
            ]
        )
    return photos


def eer(distances, same):
    order = np.argsort(distances)
    same = same[order]
    false_reject = 1 - np.cumsum(same) / same.sum()
    false_accept = np.cumsum(~same) / (~same).sum()
    i = np.argmin(np.abs(false_reject - false_accept))
    return 100 * (false_reject[i] + false_accept[i]) / 2


def pair_eer(vectors, labels, cosine):
    if cosine:
        vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    d = ((vectors[:, None] - vectors[None]) ** 2).sum(-1)
    upper = np.triu_indices(len(vectors), 1)
    return eer(d[upper], (labels[:, None] == labels[None])[upper])


def fisherfaces(train, k, regularisation):
    """PCA to k dimensions, then the discriminant axes of the training people."""
    x = np.concatenate(train)
    y = np.repeat(np.arange(len(train)), [len(t) for t in train])
    mean = x.mean(0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    pca = vt[:k]
    z = (x - mean) @ pca.T
    means = np.array([z[y == c].mean(0) for c in range(len(train))])
    within = sum((z[y == c] - means[c]).T @ (z[y == c] - means[c]) for c in range(len(train)))
    within += regularisation * np.trace(within) / k * np.eye(k)
    between = (means - means.mean(0)).T @ (means - means.mean(0))
    values, vectors = np.linalg.eig(np.linalg.solve(within, between))
    axes = vectors[:, np.argsort(-values.real)[: len(train) - 1]].real
    return lambda photos: ((photos - mean) @ pca.T) @ axes


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "att_faces"
    photos = load(root)
    pixels, fisher = [], []
    for i, (validation, test) in enumerate(SPLITS):
        validation, test = validation.split(), test.split()
        train = [photos[p] for p in photos if p not in validation + test]
        labels = np.repeat(np.arange(5), 10)
        val_x = np.concatenate([photos[p] for p in validation])
        test_x = np.concatenate([photos[p] for p in test])
        chosen = min(
            (pair_eer(fisherfaces(train, k, r)(val_x), labels, True), k, r)
            for k in PCA_DIMS
            for r in REGULARISATION
        )
        project = fisherfaces(train, chosen[1], chosen[2])
        pixels.append(pair_eer(test_x, labels, False))
        fisher.append(pair_eer(project(test_x), labels, True))
        print(
            f"split {i + 1} (test {' '.join(test)}): k {chosen[1]}, regularisation "
            f"{chosen[2]:g} (validation EER {chosen[0]:.2f}%); test EER raw pixels "
            f"{pixels[-1]:.2f}%, Fisherfaces {fisher[-1]:.2f}%"
        )
    for name, values in [("raw pixels", pixels), ("Fisherfaces", fisher)]:
        print(
            f"{name}: test EER {np.mean(values):.2f}% +- {np.std(values, ddof=1):.2f} "
            f"({', '.join(f'{v:.2f}' for v in values)})"
        )


if __name__ == "__main__":
    main()
