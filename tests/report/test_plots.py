"""The trade-off plot: its legend never sits in the data area, and no axis room is left past FQ = 1."""

import matplotlib.pyplot as plt
import pytest

from atwu_fast.report.plots import comparison_figure, comparison_plot

RESULTS = {"a": {"forget_quality": 1e-3, "model_utility": 0.8}, "b": {"forget_quality": 0.5, "model_utility": 0.85}}
REFERENCE = {"retain model": {"forget_quality": 1.0, "model_utility": 0.86},
             "target model": {"forget_quality": 1e-12, "model_utility": 0.87}}


@pytest.mark.parametrize("results", [RESULTS, {"a": RESULTS["a"]}])
def test_legend_is_framed_and_outside_the_axes(results):
    fig = comparison_figure(results, REFERENCE)
    try:
        fig.canvas.draw()
        ax = fig.axes[0]
        legend = ax.get_legend()
        renderer = fig.canvas.get_renderer()
        box, axes_box = legend.get_window_extent(renderer), ax.get_window_extent(renderer)
        assert legend.get_frame_on()
        assert box.x0 >= axes_box.x1  # wholly right of the data area
        assert 1.0 <= ax.get_xlim()[1] <= 2.0  # forget quality is a p-value: nothing to show past 1
    finally:
        plt.close(fig)


def test_saved_png_holds_the_legend(tmp_path):
    path = comparison_plot(RESULTS, tmp_path / "c.png", REFERENCE)
    from PIL import Image

    with Image.open(path) as img:
        width, height = img.size
    fig = comparison_figure(RESULTS, REFERENCE)
    try:
        fig.canvas.draw()
        tight = fig.get_tightbbox(fig.canvas.get_renderer())
        assert width >= tight.width * fig.dpi * 0.95  # cropped to everything drawn, the legend included
    finally:
        plt.close(fig)
