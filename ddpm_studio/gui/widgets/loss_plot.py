"""The training loss curve: raw values faint, a debiased EMA-smoothed line bold, log-y, redrawn on a timer;
KID measured during training (``train --eval-every``) on a second, linear axis at the right.

Values go into preallocated arrays that double when full, so appending costs nothing per
step; a timer redraws only when something new arrived and stops itself when nothing did.
The curves are handed log10 values computed once per point (the axis alone is in log mode),
clipping to the view and peak downsampling keep each redraw short, and the timer slows down
as the curve grows so that redrawing never takes more than a tenth of the GUI thread.
The grid is two pale paths at the axes' ticks, rebuilt when the view's range changes: pyqtgraph's
own grid (drawn by the axes, one pen change per line) tripled the cost of a repaint.
"""

from __future__ import annotations

import math
from time import perf_counter

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QHBoxLayout, QLabel, QSlider, QVBoxLayout, QWidget

REDRAW_INTERVAL_MS = 100  # at most 10 redraws a second
SLOWEST_REDRAW_INTERVAL_MS = 2000
REDRAW_SHARE = 0.1  # of the GUI thread's time, at most
INITIAL_CAPACITY = 4096
SLIDER_STEPS = 100
DEFAULT_SMOOTHING = 0.97  # about 30 steps: follows a fast early descent, still calm on long runs
SMALLEST_LOSS = 1e-12  # log-y cannot show zero
KID_COLOUR = (215, 110, 20)
GRID_COLOURS = ((214, 214, 214), (236, 236, 236))  # lines at major ticks, then at every finer level


def smoothing_from_slider(position: int) -> float:
    """Slider 0..100 to an EMA factor 0..0.999, evenly spaced in log(1 - beta)."""
    return 0.0 if position <= 0 else 1.0 - 10.0 ** (-3.0 * position / SLIDER_STEPS)


def slider_from_smoothing(beta: float) -> int:
    if beta <= 0:
        return 0
    return int(round(-math.log10(max(1.0 - beta, 1e-3)) * SLIDER_STEPS / 3.0))


def continue_ema(values: np.ndarray, beta: float, state: float, count: int) -> tuple[np.ndarray, float]:
    """Extend an exponential moving average over ``values``, debiased as in Adam.

    ``state`` is the biased average after ``count`` earlier values (0 before the first):
    ema_t = beta * ema_{t-1} + (1 - beta) * x_t, shown as ema_t / (1 - beta**t).
    Vectorised by chunks, with the closed form ema_k = beta^k (state + (1 - beta) sum_j beta^-j x_j),
    each chunk short enough that beta^-k stays far from overflowing.
    """
    values = np.asarray(values, dtype=np.float64)
    if beta <= 0.0 or len(values) == 0:
        return values.copy(), float(values[-1]) if len(values) else state
    smoothed = np.empty_like(values)
    chunk = max(1, min(4096, int(50.0 / -math.log(beta))))
    for start in range(0, len(values), chunk):
        part = values[start : start + chunk]
        powers = beta ** np.arange(1, len(part) + 1, dtype=np.float64)
        smoothed[start : start + len(part)] = powers * (state + (1.0 - beta) * np.cumsum(part / powers))
        state = float(smoothed[start + len(part) - 1])
    steps = np.arange(count + 1, count + len(values) + 1, dtype=np.float64)
    return smoothed / (1.0 - beta**steps), state


def show_plot_frame(plot: pg.PlotItem, shown: bool) -> None:
    """The axes and legend of a plot that holds data; none while it is empty (their ticks would mean nothing)."""
    for side in ("left", "bottom"):
        plot.showAxis(side, shown)
    if plot.legend is not None:
        plot.legend.setVisible(shown)


class StepAxis(pg.AxisItem):
    """The steps axis: whole steps only (a run of three steps has no step 1.5)."""

    def tickSpacing(self, minVal, maxVal, size):  # noqa: N802, N803 (pyqtgraph's names)
        levels = [(spacing, offset) for spacing, offset in super().tickSpacing(minVal, maxVal, size) if spacing >= 1]
        return levels or [(1.0, 0.0)]


class LossPlot(QWidget):
    """A live loss curve over steps 1..n; ``append`` new losses, ``set_history`` for a whole run."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self._raw = np.empty(INITIAL_CAPACITY, dtype=np.float64)
        self._smoothed = np.empty(INITIAL_CAPACITY, dtype=np.float64)
        self._log_raw = np.empty(INITIAL_CAPACITY, dtype=np.float64)  # what the curves draw
        self._log_smoothed = np.empty(INITIAL_CAPACITY, dtype=np.float64)
        self._steps = np.arange(1, INITIAL_CAPACITY + 1, dtype=np.float64)
        self._count = 0
        self._ema_state = 0.0
        self._smoothing = DEFAULT_SMOOTHING
        self._dirty = False

        self.plot_widget = pg.PlotWidget(background="w", axisItems={"bottom": StepAxis(orientation="bottom")})
        plot = self.plot_widget.getPlotItem()
        # Only the axis is in log mode: the curves get log10 values, computed once per point rather
        # than by pyqtgraph for the whole curve at every redraw.
        plot.getAxis("left").setLogMode(True)
        plot.setClipToView(True)
        plot.setDownsampling(auto=True, mode="peak")
        self.grid_paths = [pg.PlotCurveItem(pen=pg.mkPen(colour), connect="pairs") for colour in GRID_COLOURS]
        for path in self.grid_paths:
            path.setZValue(-10)  # under the curves
            plot.addItem(path, ignoreBounds=True)
        plot.vb.sigRangeChanged.connect(self._update_grid)
        plot.vb.sigResized.connect(self._update_grid)
        plot.setLabel("bottom", "step")
        plot.setLabel("left", "loss (log scale)")
        plot.setMenuEnabled(False)
        for axis in ("left", "bottom"):
            plot.getAxis(axis).setTextPen(pg.mkPen(60, 60, 60))
            plot.getAxis(axis).setPen(pg.mkPen(120, 120, 120))
        plot.addLegend(offset=(-10, 10), labelTextColor=(60, 60, 60))
        self.raw_curve = plot.plot(pen=pg.mkPen(70, 120, 200, 110), name="loss")
        self.smooth_curve = plot.plot(pen=pg.mkPen(20, 70, 170, width=2.5), name="smoothed")
        self._add_kid_axis(plot)
        # Before the first step: a sentence, and no axes (their ticks would mean nothing yet).
        self.empty_text = pg.TextItem("The loss appears here once training starts.", color=(120, 120, 120),
                                      anchor=(0.5, 0.5))
        self.plot_widget.addItem(self.empty_text, ignoreBounds=True)
        self.empty_text.setPos(0.5, 0.5)  # the middle of the empty view
        self._axes_shown = True
        self._show_axes(False)

        self.smoothing_slider = QSlider(Qt.Orientation.Horizontal)
        self.smoothing_slider.setRange(0, SLIDER_STEPS)
        self.smoothing_slider.setValue(slider_from_smoothing(DEFAULT_SMOOTHING))
        self.smoothing_slider.setToolTip("How strongly the bold line averages recent steps "
                                         "(an exponential moving average).")
        self.smoothing_slider.valueChanged.connect(lambda position: self.set_smoothing(smoothing_from_slider(position)))
        self.smoothing_label = QLabel()
        self.smoothing_label.setMinimumWidth(40)
        self._show_smoothing()

        controls = QHBoxLayout()
        controls.addWidget(QLabel("Smoothing"))
        controls.addWidget(self.smoothing_slider, 1)
        controls.addWidget(self.smoothing_label)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.plot_widget, 1)
        layout.addLayout(controls)

        self.redraw_timer = QTimer(self)
        self.redraw_timer.setObjectName("loss-plot-redraw")
        self.redraw_timer.setInterval(REDRAW_INTERVAL_MS)
        self.redraw_timer.timeout.connect(self._redraw_if_changed)

    # --- data ---------------------------------------------------------------------------------------
    def point_count(self) -> int:
        return self._count

    def losses(self) -> np.ndarray:
        return self._raw[: self._count].copy()

    def smoothed(self) -> np.ndarray:
        return self._smoothed[: self._count].copy()

    def append(self, losses) -> None:
        """Add the losses of the next steps; the curve redraws at the next timer tick."""
        values = np.maximum(np.asarray(losses, dtype=np.float64).ravel(), SMALLEST_LOSS)
        if len(values) == 0:
            return
        self._reserve(self._count + len(values))
        end = self._count + len(values)
        self._raw[self._count : end] = values
        self._smoothed[self._count : end], self._ema_state = continue_ema(
            values, self._smoothing, self._ema_state, self._count
        )
        np.log10(self._raw[self._count : end], out=self._log_raw[self._count : end])
        np.log10(self._smoothed[self._count : end], out=self._log_smoothed[self._count : end])
        self._count = end
        self._mark_dirty()

    def set_history(self, losses) -> None:
        """Replace the curve with a whole history (step 1 first), e.g. of a model reopened to resume."""
        self._count = 0
        self._ema_state = 0.0
        self.append(losses)
        self._mark_dirty()

    def clear(self) -> None:
        self.set_kid_history([])
        self.set_history([])

    def set_smoothing(self, beta: float) -> None:
        self._smoothing = float(beta)
        if self.smoothing_slider.value() != slider_from_smoothing(beta):
            self.smoothing_slider.blockSignals(True)
            self.smoothing_slider.setValue(slider_from_smoothing(beta))
            self.smoothing_slider.blockSignals(False)
        self._smoothed[: self._count], self._ema_state = continue_ema(self._raw[: self._count], self._smoothing, 0.0, 0)
        np.log10(self._smoothed[: self._count], out=self._log_smoothed[: self._count])
        self._show_smoothing()
        self._mark_dirty()

    def _reserve(self, needed: int) -> None:
        capacity = len(self._raw)
        if needed <= capacity:
            return
        while capacity < needed:
            capacity *= 2
        for name in ("_raw", "_smoothed", "_log_raw", "_log_smoothed"):
            grown = np.empty(capacity, dtype=np.float64)
            grown[: self._count] = getattr(self, name)[: self._count]
            setattr(self, name, grown)
        self._steps = np.arange(1, capacity + 1, dtype=np.float64)

    # --- KID, on a second axis ------------------------------------------------------------------------
    def _add_kid_axis(self, plot: pg.PlotItem) -> None:
        """KID of the EMA weights (``train --eval-every``) on a linear right axis, sharing the steps axis."""
        self.kid_steps: list[int] = []
        self.kid_values: list[float] = []
        self.kid_view = pg.ViewBox()
        plot.showAxis("right")
        plot.scene().addItem(self.kid_view)
        right = plot.getAxis("right")
        right.linkToView(self.kid_view)
        right.setLabel("KID (EMA samples)", color=KID_COLOUR)
        right.setTextPen(pg.mkPen(KID_COLOUR))
        right.setPen(pg.mkPen(KID_COLOUR))
        right.setStyle(showValues=False)
        right.setGrid(False)  # the loss axis draws the grid
        self.kid_view.setXLink(plot)
        self.kid_curve = pg.PlotDataItem(pen=pg.mkPen(KID_COLOUR, width=2), symbol="o", symbolSize=7,
                                         symbolBrush=KID_COLOUR, symbolPen=None)
        self.kid_view.addItem(self.kid_curve)
        plot.vb.sigResized.connect(lambda: self.kid_view.setGeometry(plot.vb.sceneBoundingRect()))
        self._kid_shown = True
        self._show_kid(False)  # the axis and its legend entry appear with the first measurement

    def _show_kid(self, shown: bool) -> None:
        if shown == self._kid_shown:
            return
        self._kid_shown = shown
        plot = self.plot_widget.getPlotItem()
        plot.showAxis("right", shown)
        plot.getAxis("right").setStyle(showValues=shown)
        if shown:
            plot.legend.addItem(self.kid_curve, "KID")
        else:
            plot.legend.removeItem(self.kid_curve)

    def add_kid(self, step: int, value: float) -> None:
        """One KID measurement at ``step`` (it replaces an earlier one of the same step)."""
        if step in self.kid_steps:
            index = self.kid_steps.index(step)
            del self.kid_steps[index], self.kid_values[index]
        self.kid_steps.append(int(step))
        self.kid_values.append(float(value))
        order = np.argsort(self.kid_steps)
        self.kid_steps = [self.kid_steps[i] for i in order]
        self.kid_values = [self.kid_values[i] for i in order]
        self._mark_dirty()

    def set_kid_history(self, points: list[tuple[int, float]]) -> None:
        self.kid_steps, self.kid_values = [], []
        for step, value in points:
            self.add_kid(step, value)
        self._mark_dirty()

    # --- drawing --------------------------------------------------------------------------------------
    def _show_smoothing(self) -> None:
        self.smoothing_label.setText(f"{self._smoothing:.3g}" if self._smoothing > 0 else "off")

    def _mark_dirty(self) -> None:
        self._dirty = True
        if self.isVisible() and not self.redraw_timer.isActive():
            self.redraw_timer.start()

    def _redraw_if_changed(self) -> None:
        if not self._dirty:
            self.redraw_timer.stop()  # idle: no timer runs between bursts of data
            return
        self.redraw()

    def redraw(self) -> None:
        """Draw the current data now (the timer calls this; tests and screenshots may too)."""
        started = perf_counter()
        self._dirty = False
        count = self._count
        steps = self._steps[:count]
        self.raw_curve.setData(steps, self._log_raw[:count])
        self.smooth_curve.setData(steps, self._log_smoothed[:count])
        self.empty_text.setVisible(count == 0)
        self._show_axes(count > 0)
        self.kid_curve.setData(self.kid_steps, self.kid_values)
        self._show_kid(bool(self.kid_steps))
        # Long curves cost more to hand over; redraw less often rather than take the GUI thread.
        took_ms = (perf_counter() - started) * 1000
        interval = min(SLOWEST_REDRAW_INTERVAL_MS, max(REDRAW_INTERVAL_MS, int(took_ms / REDRAW_SHARE)))
        self.redraw_timer.setInterval(interval)

    def _show_axes(self, shown: bool) -> None:
        if shown == self._axes_shown:
            return
        self._axes_shown = shown
        show_plot_frame(self.plot_widget.getPlotItem(), shown)
        self._update_grid()

    def axes_shown(self) -> bool:
        return self._axes_shown

    def kid_shown(self) -> bool:
        return self._kid_shown

    def _update_grid(self) -> None:
        """Grid lines at the axes' tick values (log10 ones on the loss axis), across the current view."""
        view = self.plot_widget.getPlotItem().vb
        (x_low, x_high), (y_low, y_high) = view.viewRange()
        levels: list[tuple[list[float], list[float]]] = [([], []) for _ in self.grid_paths]
        if self._axes_shown:
            for axis_name, low, high, pixels, index in (("bottom", x_low, x_high, view.width(), 0),
                                                         ("left", y_low, y_high, view.height(), 1)):
                axis = self.plot_widget.getPlotItem().getAxis(axis_name)
                for level, (_spacing, values) in enumerate(axis.tickValues(low, high, max(pixels, 1.0))):
                    for value in values:
                        # On the log axis the decades are the major lines, whatever level pyqtgraph gave them.
                        major = abs(value - round(value)) < 1e-9 if axis.logMode else level == 0
                        levels[0 if major else 1][index].append(value)
        for path, (xs, ys) in zip(self.grid_paths, levels):
            x = np.concatenate([np.repeat(xs, 2), np.tile([x_low, x_high], len(ys))])
            y = np.concatenate([np.tile([y_low, y_high], len(xs)), np.repeat(ys, 2)])
            path.setData(x, y, connect="pairs")

    def stop(self) -> None:
        """Stop redrawing (the page is shutting down); the data stays."""
        self.redraw_timer.stop()

    def hideEvent(self, event) -> None:
        self.redraw_timer.stop()
        super().hideEvent(event)

    def showEvent(self, event) -> None:
        super().showEvent(event)
        if self._dirty:
            self.redraw_timer.start()
