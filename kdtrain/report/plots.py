"""The report's pictures, with matplotlib (Agg): accuracy against size and latency with the Pareto front, the
teachers and the no-teacher baselines; accuracy against T and alpha; parameter importances; the optimisation
history; the hypervolume against compute; the gain per width; several studies' fronts compared. Axes carry plain
numbers and no two labels touch (declutter, checked by a test on every saved picture)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kdtrain.pareto import front_mask


def tick_labels(axis, renderer) -> list:
    """Display boxes of an axis's major tick labels inside its view."""
    low, high = sorted(axis.get_view_interval())
    span = (high - low) * 1e-9
    labels = axis.get_majorticklabels()
    locs = list(axis.get_majorticklocs())[: len(labels)]
    return [
        lab.get_window_extent(renderer)
        for lab, loc in zip(labels, locs, strict=False)
        if low - span <= loc <= high + span and lab.get_text()
    ]


def declutter(fig) -> None:
    """Fewer ticks on any axis whose labels touch (0.0100 on 0.0125 on a narrow axis, 900 on 1,000): linear axes
    at most 6 ticks, then 5, ... 2; log axes from every multiple of a power of ten to 1, 2 and 5 times them, to the
    powers alone, to 3 even steps: the first whose labels stand apart."""
    import matplotlib.ticker as mt

    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            if isinstance(axis.get_major_locator(), mt.FixedLocator):
                continue  # ticks chosen one by one (the widths of gain_per_width)
            fewer = (
                [mt.MaxNLocator(n) for n in (6, 5, 4, 3, 2)]
                if axis.get_scale() == "linear"
                else [
                    mt.LogLocator(base=10, subs=(1.0, 2.0, 5.0)),
                    mt.LogLocator(base=10, subs=(1.0,)),
                    mt.MaxNLocator(3),
                    mt.MaxNLocator(2),
                ]
            )
            for locator in fewer:
                fig.canvas.draw()
                boxes = tick_labels(axis, renderer)
                if not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :]) and (
                    len(boxes) >= 2 or axis.get_scale() == "linear"
                ):
                    break
                axis.set_major_locator(locator)


def save(fig, folder: Path, name: str) -> str:
    declutter(fig)
    fig.savefig(folder / f"{name}.png", dpi=110, bbox_inches="tight")
    fig.savefig(folder / f"{name}.svg", bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return name


def feasible_front(d, columns: list[str]) -> np.ndarray:
    """The students on the (accuracy up, cost down) front of these columns among those meeting the constraints."""
    ok = d.feasible.to_numpy()
    mask = np.zeros(len(d.students), dtype=bool)
    mask[ok] = front_mask(d.students[ok][columns].to_numpy().tolist(), ["maximize", "minimize"])
    return mask


def front_plot(d, x: str, xlabel: str, folder: Path, name: str, colour: str = "kd.temperature"):
    """Validation accuracy against x (params or latency, log scale): the students coloured by `colour`, the Pareto
    front as a step line, the no-teacher baselines and the teachers; saved in folder as name (PNG and SVG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    if not d.students.empty:
        _student_points(fig, ax, d, x, colour)
    _reference_points(ax, d, x)
    ax.set_xscale("log")
    log_ticks(ax.xaxis)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"{d.name}: accuracy vs {xlabel}")
    ax.grid(alpha=0.3)
    handles = ax.get_legend_handles_labels()[0]  # below the axes: it never covers a point or a label
    ax.legend(
        loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=min(3, max(1, len(handles))), fontsize=8, frameon=False
    )
    return save(fig, folder, name)


def _student_points(fig, ax, d, x: str, colour: str) -> None:
    """front_plot's students: the dominated ones faded, the front's outlined and joined by a step line, a colour
    bar for `colour` (log scale for the temperature)."""
    import matplotlib

    s = d.students
    mask = feasible_front(d, ["val_accuracy", x])
    dom = s[~mask]
    ax.scatter(
        dom[x],
        dom["val_accuracy"],
        c=dom[colour],
        cmap="viridis",
        alpha=0.25,
        s=28,
        norm=matplotlib.colors.LogNorm() if colour == "kd.temperature" else None,
    )
    fr = s[mask].sort_values(x)
    sc = ax.scatter(
        fr[x],
        fr["val_accuracy"],
        c=fr[colour],
        cmap="viridis",
        s=60,
        edgecolors="black",
        norm=matplotlib.colors.LogNorm() if colour == "kd.temperature" else None,
        label="Pareto front (students)",
        zorder=3,
    )
    ax.step(fr[x], fr["val_accuracy"], where="post", color="black", lw=1.2, zorder=2)
    bar = fig.colorbar(sc, ax=ax, label=colour)
    if colour == "kd.temperature":
        log_ticks(bar.ax.yaxis)


def _reference_points(ax, d, x: str) -> None:
    """front_plot's references: the no-teacher baselines (red crosses) and the teachers (stars, named in the
    legend)."""
    if not d.baselines.empty:  # joined by width on the size plot; loose points where x is not monotone in width
        b = d.baselines.sort_values(x)
        ax.plot(
            b[x],
            b["val_accuracy"],
            "x--" if x == "params" else "x",
            color="tab:red",
            label="no-teacher baseline",
            zorder=2,
        )
    # teachers named in the legend, one colour each: labels beside the stars overlapped when two teachers were
    # alike, and one was cut at the plot's edge
    for i, (_, t) in enumerate(d.teachers.iterrows()):
        ax.scatter(
            [t[x]],
            [t["val_accuracy"]],
            marker="*",
            s=220,
            color=TEACHER_COLOURS[i % len(TEACHER_COLOURS)],
            edgecolors="black",
            zorder=4,
            label=f"teacher {str(t['tag:mlflow.runName']).removeprefix('teacher-')}",
        )


TEACHER_COLOURS = ("tab:orange", "gold", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


def _number(value: float, _pos=None, compact: bool = False) -> str:
    """A tick value in plain digits (0.3, 2, 1,500), never 3×10⁻¹; `compact` (an axis reaching 10,000 or more)
    writes thousands and millions as 5k, 200k, 1M, 30M, so that one axis never mixes 1,000,000 with 1e7."""
    if value == 0:
        return "0"
    if compact and abs(value) >= 1e3:
        for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(value) >= div:
                return f"{value / div:.3g}{suffix}"
    if 1 <= abs(value) < 1e7 and value == round(value):
        return f"{value:,.0f}"  # 1,500 (not 1.5e+03)
    if 1e-3 <= abs(value) < 1e5:
        return f"{value:,.4g}"
    return f"{value:.0e}".replace("e+0", "e").replace("e-0", "e-")


def _axis_numbers(axis):
    """_number for this axis's ticks: compact when the axis's view reaches 10,000 (read at drawing time)."""
    import matplotlib.ticker as mt

    return mt.FuncFormatter(lambda v, pos: _number(v, pos, compact=max(map(abs, axis.get_view_interval())) >= 1e4))


def log_ticks(axis) -> None:
    """A log axis (or a log colour bar's) with plain numbers: labels at each power of ten, at 1, 2 and 5 times
    them when it spans under two decades, at every multiple under one, at 4 even steps when even that gives fewer
    than two; no other minor labels (they collided: 3×10⁻¹ on 4×10⁻¹)."""
    import matplotlib.ticker as mt

    low, high = sorted(v for v in axis.get_view_interval())
    decades = np.log10(high / low) if low > 0 and high > 0 else 3.0
    subs = tuple(range(1, 10)) if decades < 1 else (1.0, 2.0, 5.0) if decades < 2 else (1.0,)
    if low > 0 and high > 0:
        powers = range(int(np.floor(np.log10(low))), int(np.ceil(np.log10(high))) + 1)
        inside = [m * 10.0**k for k in powers for m in subs if low <= m * 10.0**k <= high]
    else:
        inside = []
    axis.set_major_locator(mt.LogLocator(base=10, subs=subs) if len(inside) >= 2 else mt.MaxNLocator(4))
    axis.set_major_formatter(_axis_numbers(axis))
    axis.set_minor_locator(mt.LogLocator(base=10, subs=tuple(range(2, 10))))
    axis.set_minor_formatter(mt.NullFormatter())


def hyper_plots(d, folder: Path) -> list[str]:
    """Accuracy against T and alpha (coloured by size), parameter importances and the optimisation history of a
    report.StudyData; the names of the pictures saved."""
    import matplotlib.pyplot as plt

    names = []
    s = d.students
    for key, log in (("kd.temperature", True), ("kd.alpha", False)):
        if key in s and s[key].notna().any():
            fig, ax = plt.subplots(figsize=(5, 3.6))
            sc = ax.scatter(
                s[key],
                s["val_accuracy"],
                c=s["params"],
                cmap="plasma",
                s=30,
                norm=__import__("matplotlib").colors.LogNorm(),
            )
            log_ticks(fig.colorbar(sc, ax=ax, label="params").ax.yaxis)
            if log:
                ax.set_xscale("log")
                log_ticks(ax.xaxis)
            ax.set_xlabel(key)
            ax.set_ylabel("validation accuracy")
            ax.set_title(f"accuracy vs {key}")
            ax.grid(alpha=0.3)
            names.append(save(fig, folder, f"accuracy_vs_{key.split('.')[-1]}"))
    if d.importances:
        fig, ax = plt.subplots(figsize=(5, 3.6))
        items = sorted(d.importances.items(), key=lambda kv: kv[1])
        ax.barh([k for k, _ in items], [v for _, v in items], color="tab:blue")
        ax.set_xlabel(f"importance for {next(iter(d.objectives))} (Optuna's default evaluator)")
        ax.set_title(f"hyperparameter importance ({len(d.history)} trials: a hint, not a measurement)", fontsize=9)
        names.append(save(fig, folder, "importances"))
    if not d.history.empty:
        fig, ax = plt.subplots(figsize=(5, 3.6))
        metric, direction = next(iter(d.objectives.items()))
        h = d.history.sort_values("trial")
        best = h["value"].cummax() if direction == "maximize" else h["value"].cummin()
        ax.scatter(h["trial"], h["value"], s=18, alpha=0.6, label="trial")
        ax.plot(h["trial"], best, color="black", label="best so far")
        ax.set_xlabel("trial")
        ax.set_ylabel(metric)
        ax.set_title("optimisation history")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        names.append(save(fig, folder, "history"))
    return names


def progress_plots(d, folder: Path, gains, noise: float) -> list[str]:
    """The hypervolume against training seconds, and each width's best test gain over its no-teacher baseline
    (`gains`, gains.gain_per_width) with noise x the baseline's seed spread as error bars."""
    import matplotlib.pyplot as plt

    names = []
    if d.hypervolume:
        fig, ax = plt.subplots(figsize=(5, 3.6))
        ax.step(
            [c for c, _ in d.hypervolume],
            [h for _, h in d.hypervolume],
            where="post",
            color="tab:purple",
            marker="o",
            ms=3,
        )
        ax.set_xlabel("training seconds (finished trials, pruned ones included)")
        ax.set_ylabel("hypervolume (fraction of the reference box)")
        ax.set_title("front quality against compute")
        ax.grid(alpha=0.3)
        names.append(save(fig, folder, "hypervolume"))
    g = gains
    if not g.empty:
        fig, ax = plt.subplots(figsize=(5, 3.6))
        ax.axhline(0, color="black", lw=0.8)
        ax.errorbar(
            g["student.width"],
            g["kd_gain_test"],
            yerr=noise * 100 * g["baseline_test_accuracy_std"],
            fmt="o",
            color="tab:green",
            ecolor="tab:red",
            capsize=4,
            label=f"best trial's test gain; bars: {noise:g} x baseline seed std",
        )
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(__import__("matplotlib").ticker.NullLocator())
        ax.set_xticks(list(g["student.width"]), [str(int(w)) for w in g["student.width"]], fontsize=8)
        ax.set_xlabel("student width")
        ax.set_ylabel("test accuracy gain over no teacher (points)")
        ax.set_title("distillation gain per width")
        ax.legend(fontsize=7, loc="best")
        ax.grid(alpha=0.3)
        names.append(save(fig, folder, "gain_per_width"))
    return names


def compare_plot(studies: list, folder: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for i, d in enumerate(studies):
        colour = f"C{i}"
        s = d.students
        if s.empty:
            continue
        mask = feasible_front(d, ["val_accuracy", "params"])
        ax.scatter(s[~mask]["params"], s[~mask]["val_accuracy"], color=colour, alpha=0.2, s=20)
        fr = s[mask].sort_values("params")
        ax.step(fr["params"], fr["val_accuracy"], where="post", color=colour, lw=1.5)
        ax.scatter(fr["params"], fr["val_accuracy"], color=colour, edgecolors="black", s=50, label=d.name, zorder=3)
    ax.set_xscale("log")
    log_ticks(ax.xaxis)
    ax.set_xlabel("parameters")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Pareto fronts compared")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return save(fig, folder, "fronts")
