"""What a run shows: results tables, the HTML report with token heatmaps and curves, the trade-off
plot, progress bars and the per-step metrics log."""
