"""The suite's figures, as PNGs written atomically (temp file + rename) next to results.json:

    exaccerr.png              R(l), eps(l) (cumulative KL) and ExAccErr(l) (%) over generated positions l
    rouge_l_by_length.png     ROUGE-L per reference-length bucket, one panel per set, student vs teacher bars
    reliability_<set>.png     reliability diagram of a classification set (accuracy per confidence bin vs the
                              diagonal), one panel per model

matplotlib runs on its Agg backend (no display); it is imported only when a figure is drawn.
"""

from __future__ import annotations

from pathlib import Path

from kdbench.storage.atomic import atomic_write_by

ROLE_COLORS = {"student": "#1f77b4", "teacher": "#ff7f0e"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    try:
        return atomic_write_by(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    finally:
        _pyplot().close(fig)


def _none_to_nan(values):
    return [float("nan") if v is None else v for v in values]


def plot_exaccerr(curve: dict, path: Path, title: str = "") -> Path:
    """`curve` as kdbench.evaluation.exposure_bias.exposure_bias returns it (l, R, eps, exaccerr; None = undefined)."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    positions = curve["l"]
    ax1.plot(positions, _none_to_nan(curve["R"]), label="R(l): on student samples", color=ROLE_COLORS["student"])
    ax1.plot(positions, _none_to_nan(curve["eps"]), label="eps(l): on teacher samples", color=ROLE_COLORS["teacher"])
    ax1.set_xlabel("generated position l")
    ax1.set_ylabel("cumulative KL(teacher || student), nats")
    ax1.legend(fontsize=8)
    ax2.plot(positions, _none_to_nan(curve["exaccerr"]), color="#2ca02c")
    ax2.axhline(0.0, color="grey", lw=0.8)
    ax2.set_xlabel("generated position l")
    ax2.set_ylabel("ExAccErr(l), %")
    fig.suptitle(title or "Exposure bias (ExAccErr)")
    return _save(fig, path)


def plot_length_buckets(by_set: dict[str, dict[str, dict]], path: Path) -> Path:
    """`by_set`: {set: {role: {bucket: {"rouge_l": float | None, "n": int}}}}; an empty bucket draws no bar."""
    plt = _pyplot()
    names = list(by_set)
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names) + 0.5, 3.6), squeeze=False,
                             layout="constrained")
    for ax, name in zip(axes[0], names):
        roles = list(by_set[name])
        buckets = list(next(iter(by_set[name].values())))
        width = 0.8 / max(len(roles), 1)
        for j, role in enumerate(roles):
            xs = [i + (j - (len(roles) - 1) / 2) * width for i in range(len(buckets))]
            values = [by_set[name][role][b]["rouge_l"] for b in buckets]
            ax.bar(xs, [0.0 if v is None else v for v in values], width, label=role,
                   color=ROLE_COLORS.get(role))
        counts = [next(iter(by_set[name].values()))[b]["n"] for b in buckets]
        ax.set_xticks(range(len(buckets)), [f"{b}\n(n={c})" for b, c in zip(buckets, counts)])
        ax.set_title(name)
        ax.set_xlabel("reference length (words)")
        ax.set_ylabel("ROUGE-L")
        ax.legend(fontsize=8)
    fig.suptitle("ROUGE-L by reference length")
    return _save(fig, path)


def plot_reliability(by_role: dict[str, dict], path: Path, title: str) -> Path:
    """`by_role`: {role: reliability diagram (kdbench.evaluation.calibration.reliability_diagram)}."""
    plt = _pyplot()
    roles = list(by_role)
    fig, axes = plt.subplots(1, len(roles), figsize=(3.8 * len(roles), 3.8), squeeze=False, layout="constrained")
    for ax, role in zip(axes[0], roles):
        d = by_role[role]
        edges = d["edges"]
        centers = [(a + b) / 2 for a, b in zip(edges, edges[1:])]
        width = edges[1] - edges[0]
        acc = [0.0 if a is None else a for a in d["accuracy"]]
        ax.bar(centers, acc, width * 0.9, color=ROLE_COLORS.get(role), alpha=0.8, label="accuracy")
        conf = [(c, v) for c, v in zip(centers, d["confidence"]) if v is not None]
        if conf:
            ax.plot([c for c, _ in conf], [v for _, v in conf], "k.", label="mean confidence")
        ax.plot([0, 1], [0, 1], "--", color="grey", lw=0.8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{role} (n={d['n']})")
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(title)
    return _save(fig, path)


def plot_validity(by_role: dict[str, dict], path: Path, title: str) -> Path:
    """`by_role`: {role: truth_math.longform_validity's curve}: the share of sampled texts whose first L words are
    all valid under the grammar, by L (exposure bias against the ground truth), and the share accepted whole."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.8), layout="constrained")
    for role, curve in by_role.items():
        lengths = sorted(int(L) for L in curve["survival"])
        ax.plot(lengths, [curve["survival"][str(L)] for L in lengths], marker="o", color=ROLE_COLORS.get(role),
                label=f"{role} (whole text valid: {curve['accepted']:.2f})")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("first L words")
    ax.set_ylabel("share of samples still valid")
    ax.legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)
