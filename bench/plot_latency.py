"""Percentile plot of bench/LatencyBench's output: one panel per rate and
transaction size, one curve per mode, latency on a log axis against the
percentile on the usual HdrHistogram "nines" axis (50%, 90%, 99%, 99.9%, …).

    python3 bench/plot_latency.py bench/results/latency-percentiles.csv bench/results/latency.png
"""
import csv
import math
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

source, target = sys.argv[1], sys.argv[2]
curves = defaultdict(lambda: defaultdict(list))  # (rate, size) -> label -> [(x, ms)]
order = []
with open(source) as f:
    for row in csv.DictReader(f):
        key = (int(row["rate"]), int(row["size"]))
        p = float(row["percentile"])
        if p >= 100:
            p = 99.9999
        x = 1 / (1 - p / 100)
        curves[key][row["label"]].append((x, max(float(row["latency_ms"]), 0.01)))
        if row["label"] not in order:
            order.append(row["label"])

keys = sorted(curves, key=lambda k: (k[1], k[0]))
sizes = sorted({k[1] for k in keys})
rates = sorted({k[0] for k in keys})
fig, axes = plt.subplots(len(sizes), len(rates), figsize=(5 * len(rates), 4 * len(sizes)), squeeze=False, sharey=True)
colors = dict(zip(order, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
for i, size in enumerate(sizes):
    for j, rate in enumerate(rates):
        ax = axes[i][j]
        for label in order:
            points = curves.get((rate, size), {}).get(label)
            if not points:
                continue
            ax.plot([p[0] for p in points], [p[1] for p in points], label=label, color=colors[label], linewidth=1.6)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ticks = [2, 10, 100, 1000, 10000]
        ax.set_xticks(ticks)
        ax.set_xticklabels(["50%", "90%", "99%", "99.9%", "99.99%"])
        ax.set_xlim(1, 10000)
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(f"{rate:,} events/s, {size} row{'s' if size > 1 else ''}/tx")
        if j == 0:
            ax.set_ylabel("COMMIT → consumer (ms, log)")
        if i == len(sizes) - 1:
            ax.set_xlabel("percentile")
handles, labels = axes[0][0].get_legend_handles_labels()
fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False)
fig.suptitle("OutboxRelay: end-to-end latency, log tailing vs polling")
fig.tight_layout(rect=(0, 0.05, 1, 0.96))
fig.savefig(target, dpi=110)
