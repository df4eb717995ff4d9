"""The timeline: one image's recorded trajectory from x_T to x_0, scrubbed or played, x_t and x0_hat side by side.

Frames come from ``core.sampling.Trajectory`` and are already uint8 in memory, so moving
the slider only converts one frame to a picture. Keys: space plays and pauses, the left and
right arrows step one frame, Home and End jump to t = T and t = 0.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QKeyEvent
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QPushButton, QSlider, QVBoxLayout, QWidget

from ddpm_studio.core.sampling.job import Trajectory
from ddpm_studio.gui.style import hold_size, make_bold
from ddpm_studio.gui.widgets.image_view import ImageView

TICK_MS = 40  # the display rate while playing (25 Hz); faster speeds advance several frames per tick
SPEEDS = (("5 frames/s", 5), ("10 frames/s", 10), ("25 frames/s", 25), ("50 frames/s", 50),
          ("100 frames/s", 100), ("250 frames/s", 250))
DEFAULT_SPEED = 50


class Timeline(QWidget):
    """A scrubber over one image's trajectory, with play and pause."""

    def __init__(self, placeholder: str = "No trajectory yet.", parent: QWidget | None = None):
        super().__init__(parent)
        self.trajectory: Trajectory | None = None
        self.image_index: int | None = None
        self._frame_budget = 0.0  # fractional frames owed by the playback timer

        self.x_t_view = ImageView(placeholder, "x_t: the sample at step t")
        self.x0_view = ImageView("", "predicted x_0: the model's guess of the final image")
        views = QHBoxLayout()
        views.setSpacing(8)
        views.addWidget(self.x_t_view, 1)
        views.addWidget(self.x0_view, 1)

        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, 0)
        self.slider.setPageStep(10)
        self.slider.setToolTip("Drag from t = T (pure noise, left) to t = 0 (the image, right).")
        self.slider.valueChanged.connect(self._show_frame)
        self.slider.sliderPressed.connect(self.pause)
        self.position_label = QLabel("t = —")
        make_bold(self.position_label)
        hold_size(self.position_label, "t = 00000 · frame 00000 of 00000")
        ends = QHBoxLayout()
        self.start_label = QLabel("t = T: noise")
        ends.addWidget(self.start_label)
        ends.addStretch(1)
        keys = QLabel("space: play or pause · ← →: one frame")
        keys.setEnabled(False)  # drawn in the palette's quieter colour
        ends.addWidget(keys)
        ends.addStretch(1)
        ends.addWidget(QLabel("t = 0: image"))

        self.play_button = QPushButton("▶ Play")
        self.play_button.setToolTip("Play or pause (space)")
        self.play_button.clicked.connect(self.toggle_playing)
        self.speed_box = QComboBox()
        for label, frames_per_second in SPEEDS:
            self.speed_box.addItem(label, frames_per_second)
        self.speed_box.setCurrentIndex(self.speed_box.findData(DEFAULT_SPEED))
        self.speed_box.setToolTip("Playback speed, in recorded frames per second")
        controls = QHBoxLayout()
        controls.addWidget(self.play_button)
        controls.addWidget(self.slider, 1)
        controls.addWidget(self.position_label)
        controls.addWidget(self.speed_box)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(views, 1)
        layout.addLayout(controls)
        layout.addLayout(ends)

        self.timer = QTimer(self)
        self.timer.setObjectName("timeline-playback")
        self.timer.setInterval(TICK_MS)
        self.timer.timeout.connect(self._advance)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self._update_controls()

    # --- content --------------------------------------------------------------------------------------
    def set_trajectory(self, trajectory: Trajectory, image: int, frame: int | None = None) -> None:
        """Show ``image`` (an index into the sampled batch) of ``trajectory``, at ``frame`` (default: the last,
        t = 0)."""
        if image not in trajectory.image_indices:
            raise ValueError(f"The trajectory of image {image} was not recorded.")
        self.pause()
        self.trajectory, self.image_index = trajectory, image
        last = len(trajectory) - 1
        frame = last if frame is None else max(0, min(frame, last))
        self.slider.blockSignals(True)
        self.slider.setRange(0, last)
        self.slider.setValue(frame)
        self.slider.blockSignals(False)
        self._show_frame(frame)
        self.start_label.setText(f"t = {trajectory.timesteps[0]}: noisiest")
        self._update_controls()

    def clear(self) -> None:
        self.pause()
        self.trajectory = self.image_index = None
        self.slider.blockSignals(True)
        self.slider.setRange(0, 0)
        self.slider.blockSignals(False)
        self.x_t_view.set_image(None)
        self.x0_view.set_image(None)
        self.position_label.setText("t = —")
        self.start_label.setText("t = T: noise")
        self._update_controls()

    def show_pictures(self, x_t, x0_hat, label: str) -> None:
        """Show two pictures that are not (yet) a trajectory, such as live previews while sampling."""
        if self.trajectory is not None:
            self.clear()
        self.x_t_view.set_image(x_t)
        self.x0_view.set_image(x0_hat)
        self.position_label.setText(label)

    def frame_count(self) -> int:
        return 0 if self.trajectory is None else len(self.trajectory)

    def current_frame(self) -> int:
        return self.slider.value()

    def current_t(self) -> int | None:
        """The paper's t of the frame shown, or None when there is nothing to show."""
        return None if self.trajectory is None else self.trajectory.timesteps[self.current_frame()]

    def set_frame(self, index: int) -> None:
        self.slider.setValue(index)

    def step(self, delta: int) -> None:
        self.pause()
        self.slider.setValue(self.slider.value() + delta)

    def _show_frame(self, index: int) -> None:
        if self.trajectory is None:
            return
        x_t, x0_hat = self.trajectory.frame(index, self.image_index)
        self.x_t_view.set_image(x_t)
        self.x0_view.set_image(x0_hat)
        t = self.trajectory.timesteps[index]
        self.position_label.setText(f"t = {t} · frame {index + 1} of {len(self.trajectory)}")

    # --- playback -------------------------------------------------------------------------------------
    def is_playing(self) -> bool:
        return self.timer.isActive()

    def play(self) -> None:
        if self.frame_count() < 2:
            return
        if self.slider.value() >= self.slider.maximum():
            self.slider.setValue(0)  # at the end: play again from x_T
        self._frame_budget = 0.0
        self.timer.start()
        self._update_controls()

    def pause(self) -> None:
        self.timer.stop()
        self._update_controls()

    def toggle_playing(self) -> None:
        self.pause() if self.is_playing() else self.play()

    def frames_per_second(self) -> int:
        return int(self.speed_box.currentData())

    def _advance(self) -> None:
        self._frame_budget += self.frames_per_second() * TICK_MS / 1000
        frames = int(self._frame_budget)
        if frames == 0:
            return
        self._frame_budget -= frames
        target = min(self.slider.value() + frames, self.slider.maximum())
        self.slider.setValue(target)
        if target >= self.slider.maximum():
            self.pause()

    def _update_controls(self) -> None:
        has_frames = self.frame_count() > 1
        self.play_button.setText("❚❚ Pause" if self.is_playing() else "▶ Play")
        for widget in (self.play_button, self.slider, self.speed_box):
            widget.setEnabled(has_frames)

    # --- keyboard and visibility ----------------------------------------------------------------------
    def handle_key(self, event: QKeyEvent) -> bool:
        """Space, arrows, Home and End; True when the key was used (pages forward keys their children ignore)."""
        if self.trajectory is None:
            return False
        key = event.key()
        if key == Qt.Key.Key_Space:
            self.toggle_playing()
        elif key == Qt.Key.Key_Left:
            self.step(-1)
        elif key == Qt.Key.Key_Right:
            self.step(1)
        elif key == Qt.Key.Key_Home:
            self.step(-self.frame_count())
        elif key == Qt.Key.Key_End:
            self.step(self.frame_count())
        else:
            return False
        return True

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if self.handle_key(event):
            event.accept()
        else:
            super().keyPressEvent(event)

    def mousePressEvent(self, event) -> None:
        self.setFocus(Qt.FocusReason.MouseFocusReason)
        super().mousePressEvent(event)

    def hideEvent(self, event) -> None:
        self.pause()  # no timer runs for a page nobody sees
        super().hideEvent(event)
