"""The loss plot: a debiased EMA equal to the plain recurrence, arrays that grow, a timer that stops when idle."""

import itertools

import numpy as np
import pytest

from ddpm_studio.gui.widgets.loss_plot import LossPlot, continue_ema, slider_from_smoothing, smoothing_from_slider


def naive_debiased_ema(values, beta):
    ema, out = 0.0, []
    for step, value in enumerate(values, start=1):
        ema = beta * ema + (1 - beta) * value
        out.append(ema / (1 - beta**step))
    return np.array(out)


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9, 0.99, 0.999])
def test_the_smoothed_curve_is_the_debiased_ema_even_across_chunks_and_appends(beta):
    values = np.random.default_rng(0).uniform(0.01, 1.0, 10_000)
    expected = naive_debiased_ema(values, beta)
    whole, _ = continue_ema(values, beta, 0.0, 0)
    np.testing.assert_allclose(whole, expected, rtol=1e-9)
    first, state = continue_ema(values[:3333], beta, 0.0, 0)
    rest, _ = continue_ema(values[3333:], beta, state, 3333)
    np.testing.assert_allclose(np.concatenate([first, rest]), expected, rtol=1e-9)


def test_the_slider_maps_to_smoothing_and_back():
    assert smoothing_from_slider(0) == 0.0
    assert smoothing_from_slider(100) == pytest.approx(0.999)
    for beta in (0.9, 0.99, 0.999):
        assert smoothing_from_slider(slider_from_smoothing(beta)) == pytest.approx(beta, abs=0.005)


def test_appending_grows_the_arrays_and_the_timer_stops_when_idle(qtbot):
    plot = LossPlot()
    qtbot.addWidget(plot)
    plot.show()
    plot.append(np.full(5000, 0.5))  # beyond the first capacity
    plot.append([0.25])
    assert plot.point_count() == 5001
    assert plot.losses()[-1] == 0.25
    assert plot.redraw_timer.isActive()
    qtbot.waitUntil(lambda: not plot.redraw_timer.isActive(), timeout=2000)  # drew once, then found nothing new
    x, y = plot.raw_curve.getOriginalDataset()
    assert len(x) == 5001 and x[0] == 1 and y[-1] == pytest.approx(np.log10(0.25))  # drawn as log10 on a log axis
    assert plot.plot_widget.getPlotItem().getAxis("left").logMode
    assert plot.smoothed()[0] == pytest.approx(0.5)  # debiased: no pull towards zero at the start

    plot.set_smoothing(0.0)
    np.testing.assert_allclose(plot.smoothed(), plot.losses())
    plot.set_history([1.0, 0.5])
    assert plot.point_count() == 2
    plot.stop()
    assert not plot.redraw_timer.isActive()


def test_a_long_curve_is_redrawn_less_often(qtbot, monkeypatch):
    from ddpm_studio.gui.widgets import loss_plot

    plot = LossPlot()
    qtbot.addWidget(plot)
    plot.append([0.5])
    plot.redraw()
    assert plot.redraw_timer.interval() == loss_plot.REDRAW_INTERVAL_MS
    clock = itertools.count(0.0, 0.05)  # every reading 50 ms after the last: a redraw that took 50 ms
    monkeypatch.setattr(loss_plot, "perf_counter", lambda: next(clock))  # the plot's clock only, not the process's
    plot.redraw()
    assert plot.redraw_timer.interval() == 500


def test_no_timer_starts_while_hidden(qtbot):
    plot = LossPlot()
    qtbot.addWidget(plot)
    plot.append([1.0, 2.0])
    assert not plot.redraw_timer.isActive()
    plot.show()
    assert plot.redraw_timer.isActive()
    plot.hide()
    assert not plot.redraw_timer.isActive()


def test_an_empty_plot_shows_a_sentence_and_no_axes_and_kid_appears_with_its_first_value(qtbot):
    plot = LossPlot()
    qtbot.addWidget(plot)
    plot.resize(600, 400)
    plot.show()
    item = plot.plot_widget.getPlotItem()
    assert plot.empty_text.isVisible() and not plot.axes_shown()
    assert not item.getAxis("left").isVisible() and not item.getAxis("bottom").isVisible()
    assert not plot.kid_shown() and not item.getAxis("right").isVisible()

    plot.append(np.geomspace(1.0, 0.05, 300))
    plot.redraw()
    assert not plot.empty_text.isVisible() and plot.axes_shown()
    assert item.getAxis("left").isVisible() and item.getAxis("bottom").isVisible()
    assert not item.getAxis("right").isVisible()  # a run without KID shows no KID axis
    legend_names = [label.text for _sample, label in item.legend.items]
    assert legend_names == ["loss", "smoothed"]

    plot.add_kid(100, 0.02)
    plot.redraw()
    assert plot.kid_shown() and item.getAxis("right").isVisible()
    assert [label.text for _sample, label in item.legend.items] == ["loss", "smoothed", "KID"]

    plot.clear()
    plot.redraw()
    assert not plot.axes_shown() and not plot.kid_shown() and plot.empty_text.isVisible()


def test_the_grid_lies_on_the_axes_ticks_across_the_view(qtbot):
    plot = LossPlot()
    qtbot.addWidget(plot)
    plot.resize(600, 400)
    plot.show()
    plot.append(np.geomspace(1.0, 0.05, 2000))
    plot.redraw()
    qtbot.wait(50)
    view = plot.plot_widget.getPlotItem().vb
    (x_low, x_high), (y_low, y_high) = view.viewRange()
    x, y = plot.grid_paths[0].getData()  # the major lines, as pairs of points
    starts, ends = np.stack([x[0::2], y[0::2]], 1), np.stack([x[1::2], y[1::2]], 1)
    vertical = starts[:, 0] == ends[:, 0]
    # Vertical lines at the step axis's major ticks, from the bottom of the view to its top.
    assert set(np.round(starts[vertical, 0])) >= {500.0, 1000.0, 1500.0}
    np.testing.assert_allclose(starts[vertical, 1], y_low)
    np.testing.assert_allclose(ends[vertical, 1], y_high)
    # Horizontal ones at whole decades of the loss (log10 values): 0.1 lies in the view.
    assert -1.0 in set(np.round(starts[~vertical, 1], 6))
    np.testing.assert_allclose(starts[~vertical, 0], x_low)
    # Finer lines at 0.2, 0.3, ... between decades.
    _x, minor_y = plot.grid_paths[1].getData()
    assert np.any(np.isclose(minor_y, np.log10(0.2)))


def test_the_steps_axis_has_whole_steps_only(qtbot):
    plot = LossPlot()
    qtbot.addWidget(plot)
    plot.resize(600, 400)
    plot.show()
    plot.append([1.0, 0.8, 0.9])  # three steps: a float axis would tick 1.0, 1.5, 2.0, ...
    plot.redraw()
    qtbot.wait(50)
    axis = plot.plot_widget.getPlotItem().getAxis("bottom")
    low, high = plot.plot_widget.getPlotItem().vb.viewRange()[0]
    ticks = [value for _spacing, values in axis.tickValues(low, high, 500) for value in values]
    assert ticks and all(float(value).is_integer() for value in ticks), ticks
    for path in plot.grid_paths:  # no grid lines between steps either
        x, _y = path.getData()
        vertical = x[0::2][x[0::2] == x[1::2]]
        assert all(float(value).is_integer() for value in vertical), vertical
