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


def _flatten(prefix: str, v, out: list) -> None:
    if isinstance(v, bool):
        return
    if isinstance(v, (int, float)):
        out.append((prefix, float(v)))
    elif isinstance(v, dict):
        for k, x in v.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), x, out)


def plot_numbers(title: str, pairs: list, unit: str, out: pathlib.Path) -> bool:
    """A bar per (name, value): for results written in another shape (e.g. chaos counts)."""
    if not pairs:
        return False
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.3 * len(pairs)), dpi=100)
    names = [n for n, _ in pairs][::-1]
    ax.barh(names, [v for _, v in pairs][::-1], color="#4c72b0")
    ax.set_xlabel(unit)
    ax.tick_params(axis="y", labelsize=8)
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return True


def md_table(text: str) -> tuple[list[str], list[list[str]]]:
    """The first markdown table of `text`: header and rows."""
    lines = [ln.strip() for ln in text.splitlines()]
    for i, ln in enumerate(lines):
        if ln.startswith("|") and i + 1 < len(lines) and set(lines[i + 1]) <= set("|-: "):
            head = [c.strip() for c in ln.strip("|").split("|")]
            rows = []
            for r in lines[i + 2:]:
                if not r.startswith("|"):
                    break
                rows.append([c.strip() for c in r.strip("|").split("|")])
            return head, rows
    return [], []


def plot_md(name: str, text: str, out: pathlib.Path) -> bool:
    """Each numeric column of the first table, a panel of bars by the first column."""
    head, rows = md_table(text)
    cols = []
    for j in range(1, len(head)):
        try:
            vals = [float(r[j].split()[0]) for r in rows]
        except (ValueError, IndexError):
            continue
        cols.append((head[j], vals))
    if not cols:
        return False
    labels = [r[0] for r in rows]
    fig, axes = plt.subplots(len(cols), 1, figsize=(9, 1 + (0.3 * len(rows) + 0.6) * len(cols)),
                             dpi=100, squeeze=False)
    for ax, (h, vals) in zip(axes[:, 0], cols):
        ax.barh(labels[::-1], vals[::-1], color="#4c72b0")
        ax.set_xlabel(h)
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(True, axis="x", alpha=0.3)
    axes[0, 0].set_title(name)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return True


def main() -> int:
    results = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS
    index = [
        "# Benchmark results\n",
        "The latest run of each benchmark (`make bench`; one: `make bench PGML_BENCH=<name>`).",
        "How each bench works and what the simulator does not model: "
        "[docs/design/bench.md](../../docs/design/bench.md).\n",
    ]
    done = set()
    for js in sorted(results.glob("*.json")):
        report = json.loads(js.read_text())
        if not isinstance(report, dict):
            continue
        if "bench" not in report or "figures" not in report:
            # Another shape (e.g. chaos): its numbers as bars, its table indexed.
            png, md = js.with_suffix(".png"), js.with_suffix(".md")
            pairs: list = []
            _flatten("", report, pairs)
            drawn = plot_numbers(js.stem, pairs, "count", png)
            done.add(js.stem)
            index.append(f"## {js.stem}\n")
            links = [f"[{md.name}]({md.name})"] if md.exists() else []
            index.append(" · ".join(links + [f"[{js.name}]({js.name})"]) + "\n")
            if drawn:
                print(f"plot: {png}")
                index.append(f"![{js.stem}]({png.name})\n")
            if md.exists():
                body = md.read_text()
                body = body.split("\n", 1)[1] if body.startswith("# ") else body
                index.append(body.strip() + "\n")
            continue
        done.add(js.stem)
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
    # Tables without JSON (e.g. fuzz): their first table's numbers.
    for md in sorted(results.glob("*.md")):
        if md.name == "README.md" or md.stem in done:
            continue
        text = md.read_text()
        png = md.with_suffix(".png")
        index.append(f"## {md.stem}\n")
        index.append(f"[{md.name}]({md.name})\n")
        if plot_md(md.stem, text, png):
            print(f"plot: {png}")
            index.append(f"![{md.stem}]({png.name})\n")
        # Its title line, if any, as plain text under the section's.
        index.append(text.strip().removeprefix("# ") + "\n")
    (results / "README.md").write_text("\n".join(index))
    print(f"index: {results / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
