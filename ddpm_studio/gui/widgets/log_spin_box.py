"""A number spin box whose arrows step by factors, for settings that live on a log scale."""

from __future__ import annotations

from PySide6.QtGui import QValidator
from PySide6.QtWidgets import QDoubleSpinBox, QWidget


class LogStepSpinBox(QDoubleSpinBox):
    """A learning rate steps by x2; with ``complement`` an EMA decay steps by 0.9 → 0.99 → 0.999 (1 - value by x10)."""

    def __init__(self, minimum: float, maximum: float, complement: bool = False, parent: QWidget | None = None):
        super().__init__(parent)
        self.complement = complement
        self.setDecimals(10)
        self.setRange(minimum, maximum)
        self.setKeyboardTracking(False)

    def textFromValue(self, value: float) -> str:
        return f"{value:.6g}"

    def valueFromText(self, text: str) -> float:
        try:
            return float(text)
        except ValueError:
            return self.value()

    def validate(self, text: str, position: int):
        try:
            float(text)
            return QValidator.State.Acceptable, text, position
        except ValueError:
            return QValidator.State.Intermediate, text, position

    def stepBy(self, steps: int) -> None:
        value = self.value()
        if self.complement:
            self.setValue(1.0 - (1.0 - value) * 10.0 ** (-steps))
        else:
            self.setValue(value * 2.0**steps)
