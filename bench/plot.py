#!/usr/bin/env python3
"""Plots of the benchmarks' CSVs.
   plot.py images.csv OUT_DIR  ->  OUT_DIR/gbps.png, OUT_DIR/pauses.png   (bench/images.sh)
   plot.py --softrdma softrdma.csv OUT_DIR  ->  OUT_DIR/softrdma.png      (bench/softrdma.sh)
   plot.py --verbs verbs.csv OUT_DIR  ->  OUT_DIR/verbs.png               (bench/verbs.sh)"""
import csv
import sys

import matplotlib

matplotlib.use("Agg")  # no display on a bench machine
import matplotlib.pyplot as plt



def plot_softrdma(path, out):
    """Each measured pair side by side (softrdma and its yardstick), one panel per unit, ratio and goal as labels."""
    rows = [r for r in csv.DictReader(open(path)) if r["value"] and r["yardstick"]]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, unit, title in ((axes[0], "GB/s", "bandwidth (higher is better)"),
                            (axes[1], "us", "latency (lower is better)")):
        sel = [r for r in rows if r["unit"] == unit]
        xs = range(len(sel))
        ax.bar([x - 0.2 for x in xs], [float(r["value"]) for r in sel], 0.4, label="softrdma")
        ax.bar([x + 0.2 for x in xs], [float(r["yardstick_value"] or 0) for r in sel], 0.4, label="yardstick")
        for x, r in zip(xs, sel):
            note = f'{r["ratio"]}x'
            if r["goal"]:
                note += f'\ngoal {r["goal"]}\n{r["verdict"]}'
            top = max(float(r["value"]), float(r["yardstick_value"] or 0))
            ax.annotate(note, (x, top), ha="center", va="bottom", fontsize=7)
        ax.set_xticks(list(xs))
        ax.set_xticklabels([f'{r["where"]} {r["mode"]}\n{r["what"]}\nvs {r["yardstick"]}' for r in sel],
                           fontsize=7, rotation=20, ha="right")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.margins(y=0.25)
        ax.legend(fontsize=8)
    fig.suptitle("softrdma vs its yardsticks (one run)")
    fig.tight_layout()
    fig.savefig(f"{out}/softrdma.png", dpi=120)


def plot_verbs(path, out):
    """Every A/B sample of the verbs layer's cost (plain vs under `ibdbg run`), medians as lines."""
    rows = [r for r in csv.DictReader(open(path)) if r["plain"] and r["samples"].startswith("plain:")]
    fig, axes = plt.subplots(1, len(rows), figsize=(5 * len(rows), 4.5), squeeze=False)
    for ax, r in zip(axes[0], rows):
        plain, with_ = (s.split(":", 1)[1].split() for s in r["samples"].split(" / "))
        for i, (name, vals) in enumerate((("plain", plain), ("ibdbg run", with_))):
            ax.scatter([i] * len(vals), [float(v) for v in vals], alpha=0.6)
            med = float(r["plain"] if i == 0 else r["with_ibdbg"])
            ax.hlines(med, i - 0.25, i + 0.25, color="black")
        ax.set_xticks([0, 1])
        ax.set_xticklabels(["plain", "ibdbg run"])
        ax.set_xlim(-0.6, 1.6)
        ax.set_ylabel(r["unit"])
        ax.set_title(f'{r["what"]}\nadded {r["added_pct"]}% (goal {r["goal"]}): {r["verdict"]}', fontsize=8)
    fig.suptitle("verbs layer cost outside captures (softrdma, one host; lines: medians)")
    fig.tight_layout()
    fig.savefig(f"{out}/verbs.png", dpi=120)


if sys.argv[1] == "--verbs":
    plot_verbs(sys.argv[2], sys.argv[3])
    sys.exit(0)
if sys.argv[1] == "--softrdma":
    plot_softrdma(sys.argv[2], sys.argv[3])
    sys.exit(0)

rows = list(csv.DictReader(open(sys.argv[1])))
out = sys.argv[2]
measured = [r for r in rows if r["gbps"]]
sizes = sorted({r["size_gib"] for r in measured}, key=float)

# One group of bars per mode and memory kind; one bar per size.
labels = []
for r in measured:
    label = r["mode"] if r["memory"] == "any" else f'{r["mode"]}\n{r["memory"]}'
    if label not in labels:
        labels.append(label)
fig, ax = plt.subplots(figsize=(max(8, len(labels) * 0.9), 5))
width = 0.8 / max(1, len(sizes))
for i, size in enumerate(sizes):
    values = []
    for label in labels:
        v = [float(r["gbps"]) for r in measured if r["size_gib"] == size and
             (r["mode"] if r["memory"] == "any" else f'{r["mode"]}\n{r["memory"]}') == label]
        values.append(v[0] if v else 0)
    ax.bar([x + i * width for x in range(len(labels))], values, width, label=f"{size} GiB")
for r in measured:
    if r["mode"] == "dd write fdatasync":
        ax.axhline(float(r["gbps"]), linestyle="--", linewidth=0.8, color="grey")
ax.set_xticks([x + width * (len(sizes) - 1) / 2 for x in range(len(labels))])
ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
ax.set_ylabel("GB/s (of the process's memory)")
ax.set_title("ibdbg capture and replay vs dd (dashed: dd write with fdatasync)")
ax.legend()
fig.tight_layout()
fig.savefig(f"{out}/gbps.png", dpi=120)

paused = [r for r in measured if r["pause_ms"]]
fig, ax = plt.subplots(figsize=(8, 4))
ax.bar([f'{r["mode"]}\n{r["memory"]} {r["size_gib"]} GiB' for r in paused], [float(r["pause_ms"]) for r in paused])
ax.axhline(50, linestyle="--", color="red", linewidth=0.8, label="goal of forked capture: 50 ms")
ax.set_yscale("log")
ax.set_ylabel("longest pause the app saw (ms)")
ax.tick_params(axis="x", labelsize=7, rotation=60)
ax.legend()
fig.tight_layout()
fig.savefig(f"{out}/pauses.png", dpi=120)
