"""Plots of the benchmark results and their index (run by scripts/bench.sh after the runs).

For every bench/results/<bench>.json (written by the pgml-bench lib): bench/results/<bench>.png
-- the report's `series` as curves (dashed ones are bounds or models), or, without series,
each figure's median with a min-max bar, one panel per unit. Then bench/results/README.md:
the latest table of every bench, with its plot.

    .venv/bin/python tests/bench/plot.py [results dir]

matplotlib with the Agg backend and its own bundled DejaVu fonts: no display and no system
font needed.
"""

from __future__ import annotations

import json
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parents[2] / "bench" / "results"


def plot_series(report: dict, out: pathlib.Path) -> None:
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=100)
    colors: dict[str, str] = {}
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for s in report["series"]:
        # A bound takes the colour of the measurement it bounds (same name before ':').
        key = s["name"].split(":")[0].split(" (")[0]
        color = colors.setdefault(key, cycle[len(colors) % len(cycle)])
        xs = [p[0] for p in s["points"]]
        ys = [p[1] for p in s["points"]]
        if s.get("dashed"):
            ax.plot(xs, ys, linestyle="--", linewidth=1.2, color=color, label=s["name"])
        else:
            ax.step(xs, ys, where="post", linewidth=1.8, color=color, label=s["name"])
    first = report["series"][0]
    ax.set_xlabel(first["x_label"])
    ax.set_ylabel(first["y_label"])
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{report['bench']} ({report.get('finished', '')})")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def plot_figures(report: dict, out: pathlib.Path) -> None:
    units: dict[str, list[dict]] = {}
    for f in report["figures"]:
        units.setdefault(f["unit"], []).append(f)
    n = max(1, len(units))
    rows = max(len(v) for v in units.values()) if units else 1
    fig, axes = plt.subplots(n, 1, figsize=(9, 1.2 + 0.45 * rows * n), dpi=100, squeeze=False)
    for ax, (unit, figs) in zip(axes[:, 0], units.items()):
        names = [f["name"] for f in figs][::-1]
        med = [f["median"] for f in figs][::-1]
        lo = [f["median"] - f["min"] for f in figs][::-1]
        hi = [f["max"] - f["median"] for f in figs][::-1]
        ax.barh(names, med, xerr=[lo, hi], capsize=3, color="#4c72b0")
        ax.set_xlabel(f"median ({unit}), bar: min-max")
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(True, axis="x", alpha=0.3)
    axes[0, 0].set_title(f"{report['bench']} ({report.get('finished', '')})")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main() -> int:
    results = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS
    index = [
        "# Benchmark results\n",
        "The latest run of each benchmark (`make bench`; one: `make bench PGML_BENCH=<name>`).",
        "How each bench works and what the simulator does not model: "
        "[docs/design/bench.md](../../docs/design/bench.md).\n",
    ]
    for js in sorted(results.glob("*.json")):
        report = json.loads(js.read_text())
        if "bench" not in report or "figures" not in report:
            continue
        png = js.with_suffix(".png")
        if report.get("series"):
            plot_series(report, png)
        else:
            plot_figures(report, png)
        print(f"plot: {png}")
        md = js.with_suffix(".md")
        table = md.read_text() if md.exists() else ""
        # The bench's own title becomes a section of the index.
        body = table.split("\n", 1)[1] if table.startswith("# ") else table
        index.append(f"## {report['bench']}\n")
        index.append(f"[{md.name}]({md.name}) · [{js.name}]({js.name})\n")
        index.append(f"![{report['bench']}]({png.name})\n")
        index.append(body.strip() + "\n")
    (results / "README.md").write_text("\n".join(index))
    print(f"index: {results / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
