"""The paper's Fig. 5 on the Likelihood page: distortion and rate against reverse steps, and distortion against rate,
with one cursor shared by the three plots and the receiver's view of one held-out image at the cursor's step."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QVBoxLayout, QWidget

from ddpm_studio.core.evaluation.rate_distortion import RateDistortion
from ddpm_studio.gui.style import MUTED_TEXT_STYLE
from ddpm_studio.gui.widgets.image_view import ImageView
from ddpm_studio.gui.widgets.loss_plot import show_plot_frame

LINE_PEN = pg.mkPen("#1f5fa8", width=2)
CURSOR_PEN = pg.mkPen("#c0392b", width=2)
CURSOR_HOVER_PEN = pg.mkPen("#e67e22", width=4)
STEPS_LABEL = "reverse steps (T − t + 1)"
RMSE_LABEL = "RMSE of x0_hat (0–255)"
RATE_LABEL = "rate (bits/dim)"


class CursorPlot(pg.PlotWidget):
    """One of the three plots: a line, and a draggable vertical cursor with a marker where it meets the line.
    ``picked(x)`` when the user clicks in the plot or drags the cursor, in the plot's x units."""

    picked = Signal(float)

    def __init__(self, title: str, x_label: str, y_label: str, parent: QWidget | None = None):
        super().__init__(parent, background="w")
        self.showGrid(x=True, y=True, alpha=0.25)
        self.setLabel("bottom", x_label)
        self.setLabel("left", y_label)
        for side in ("bottom", "left"):  # bits/dim as bits/dim: no "(x0.001)" rescaling of small rates
            self.getAxis(side).enableAutoSIPrefix(False)
        self.setTitle(title, color="#333", size="9pt")
        self.setMouseEnabled(x=False, y=False)  # a drag moves the cursor, not the view
        self.hideButtons()
        self.setMenuEnabled(False)
        self.line = self.plot([], [], pen=LINE_PEN, connect="finite")
        self.cursor = pg.InfiniteLine(angle=90, movable=True, pen=CURSOR_PEN, hoverPen=CURSOR_HOVER_PEN)
        self.cursor.setVisible(False)
        self.addItem(self.cursor, ignoreBounds=True)
        self.marker = pg.ScatterPlotItem(size=9, brush=pg.mkBrush("#c0392b"), pen=None)
        self.addItem(self.marker, ignoreBounds=True)
        self._placing = False  # the cursor is being set from code: not the user's pick
        self.cursor.sigPositionChanged.connect(self._cursor_moved)
        self.scene().sigMouseClicked.connect(self._clicked)
        show_plot_frame(self.getPlotItem(), False)

    def show_line(self, x: np.ndarray, y: np.ndarray) -> None:
        self.line.setData(x, y)
        show_plot_frame(self.getPlotItem(), True)

    def clear_line(self) -> None:
        self.line.setData([], [])
        self.marker.setData([], [])
        self.cursor.setVisible(False)
        show_plot_frame(self.getPlotItem(), False)

    def place_cursor(self, x: float, y: float) -> None:
        self._placing = True
        try:
            self.cursor.setValue(x)
        finally:
            self._placing = False
        self.cursor.setVisible(True)
        self.marker.setData([x], [y])

    def scene_position(self, x: float, y: float):
        """The scene position of the data point (x, y): where a click or drag in a test lands."""
        return self.getPlotItem().vb.mapViewToScene(pg.Point(x, y))

    def _cursor_moved(self) -> None:
        if not self._placing:
            self.picked.emit(float(self.cursor.value()))

    def _clicked(self, event) -> None:
        box = self.getPlotItem().vb
        if event.button() != Qt.MouseButton.LeftButton or not box.sceneBoundingRect().contains(event.scenePos()):
            return
        if self.line.getOriginalDataset()[0] is None:
            return
        self.picked.emit(float(box.mapSceneToView(event.scenePos()).x()))


class RateDistortionPanel(QWidget):
    """The three plots of a ``RateDistortion`` curve and what the receiver sees at the cursor's step.

    ``stepChanged(n)`` when the user moves the cursor to n reverse steps; the page then computes x_t and
    x0_hat for that step and gives them to ``show_receiver``.
    """

    stepChanged = Signal(int)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.curve: RateDistortion | None = None
        self.step: int | None = None  # reverse steps at the cursor
        self.distortion_plot = CursorPlot("Distortion against reverse steps", STEPS_LABEL, RMSE_LABEL)
        self.rate_plot = CursorPlot("Expected rate against reverse steps", STEPS_LABEL, RATE_LABEL)
        self.curve_plot = CursorPlot("Distortion against expected rate", RATE_LABEL, RMSE_LABEL)
        self.distortion_plot.picked.connect(self._picked_step)
        self.rate_plot.picked.connect(self._picked_step)
        self.curve_plot.picked.connect(self._picked_rate)
        plots = QHBoxLayout()
        plots.setSpacing(4)
        for plot in self.plots():
            plot.setMinimumSize(200, 180)
            plots.addWidget(plot, 1)

        self.note_label = QLabel()
        self.note_label.setWordWrap(True)
        self.note_label.setStyleSheet(MUTED_TEXT_STYLE)
        self.note_label.setVisible(False)
        self.cursor_label = QLabel("The curves appear here as the evaluation runs; then click or drag on a plot to "
                                   "see what the receiver has after that many reverse steps.")
        self.cursor_label.setWordWrap(True)
        self.original_view = ImageView("The held-out image", "x_0 (held out)")
        self.noisy_view = ImageView("x_t at the cursor", "x_t: what the receiver has")
        self.estimate_view = ImageView("x0_hat at the cursor", "x0_hat: its best guess of x_0")
        images = QHBoxLayout()
        for view in (self.original_view, self.noisy_view, self.estimate_view):
            view.setMinimumSize(120, 120)
            images.addWidget(view, 1)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(plots, 3)
        layout.addWidget(self.note_label)
        layout.addWidget(self.cursor_label)
        layout.addLayout(images, 2)

    def plots(self) -> tuple[CursorPlot, CursorPlot, CursorPlot]:
        return self.distortion_plot, self.rate_plot, self.curve_plot

    def set_note(self, text: str) -> None:
        """One line under the plots (the null label of a class-conditional model); empty hides it."""
        self.note_label.setText(text)
        self.note_label.setVisible(bool(text))

    # --- the curve --------------------------------------------------------------------------------------
    def show_curve(self, curve: RateDistortion) -> None:
        """Draw the curve (partial while the evaluation runs) and keep the cursor where the user put it."""
        self.curve = curve
        steps = curve.reverse_steps.astype(np.float64)
        self.distortion_plot.show_line(steps, curve.distortion_rmse)
        self.rate_plot.show_line(steps, curve.rate_bpd)
        self.curve_plot.show_line(curve.rate_bpd, curve.distortion_rmse)
        first = self.step is None
        self.set_step(self.step if not first else curve.num_timesteps, announce=first)

    def clear(self) -> None:
        self.curve = None
        self.step = None
        for plot in self.plots():
            plot.clear_line()
        for view in (self.original_view, self.noisy_view, self.estimate_view):
            view.set_image(None)
        self.cursor_label.setText("The curves appear here as the evaluation runs.")

    # --- the cursor -------------------------------------------------------------------------------------
    def set_step(self, steps: int, announce: bool = True) -> None:
        """Put the cursor at ``steps`` reverse steps on all three plots; ``announce``: tell the page."""
        if self.curve is None:
            return
        steps = int(min(max(steps, 1), self.curve.num_timesteps))
        changed = steps != self.step
        self.step = steps
        rate, rmse, se = self.curve.at_reverse_steps(steps)
        self.distortion_plot.place_cursor(steps, rmse)
        self.rate_plot.place_cursor(steps, rate)
        self.curve_plot.place_cursor(rate, rmse)
        T = self.curve.num_timesteps
        error = f" ± {se:.2f}" if se == se else ""
        measured = "" if self.curve.measured[T - steps] else " (no image has drawn this t yet: interpolated in t)"
        self.cursor_label.setText(
            f"What the receiver sees after <b>{steps:,} of {T:,} reverse steps</b> (t = {T - steps + 1:,}), at an "
            f"<b>expected rate of {rate:.4g} bits/dim</b>: distortion {rmse:.2f}{error} RMSE over "
            f"{self.curve.num_images:,} image{'s' * (self.curve.num_images != 1)}{measured}. Expected, as the "
            f"progressive code needs minimal random coding, which is not practical.")
        if announce and changed:
            self.stepChanged.emit(steps)

    def _picked_step(self, x: float) -> None:
        self.set_step(round(x))

    def _picked_rate(self, rate: float) -> None:
        """The step whose rate is nearest ``rate`` (the rate grows with the steps)."""
        if self.curve is None:
            return
        index = int(np.nanargmin(np.abs(self.curve.rate_bpd - rate)))
        self.set_step(self.curve.num_timesteps - index)

    # --- the receiver's view ----------------------------------------------------------------------------
    def show_original(self, image: np.ndarray | None) -> None:
        self.original_view.set_image(image)

    def show_receiver(self, steps: int, noisy: np.ndarray, estimate: np.ndarray) -> None:
        """x_t and x0_hat (uint8 (H, W[, 3])) at ``steps``; a view of a step the cursor has left is dropped."""
        if steps != self.step or self.curve is None:
            return
        t = self.curve.num_timesteps - steps + 1
        self.noisy_view.set_caption(f"x_t at t = {t:,}: what the receiver has")
        self.estimate_view.set_caption(f"x0_hat at t = {t:,}: its best guess")
        self.noisy_view.set_image(noisy)
        self.estimate_view.set_image(estimate)
