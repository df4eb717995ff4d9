"""Spin boxes and combo boxes in a scrolling column take the mouse wheel only when they have focus.

Otherwise, turning the wheel to scroll a settings column changes whatever setting passes under
the pointer ("Checkpoint every" went from 500 to 1). Unfocused, such a box hands the wheel to
the scroll area around it, and the column scrolls; a click or Tab gives it focus (never the
wheel itself), and then the wheel steps it, as in most desktop applications. The box passes the
event on itself rather than ignoring it: Qt 6 lets only events from the window system travel to
a parent, so ignoring would leave a synthesized wheel event (a test's, an accessibility tool's)
going nowhere.
"""

from __future__ import annotations

from PySide6.QtCore import QEvent, QObject, Qt
from PySide6.QtGui import QWheelEvent
from PySide6.QtWidgets import QAbstractSpinBox, QApplication, QComboBox, QScrollArea, QWidget


def enclosing_scroll_area(widget: QWidget) -> QScrollArea | None:
    parent = widget.parentWidget()
    while parent is not None and not isinstance(parent, QScrollArea):
        parent = parent.parentWidget()
    return parent


class WheelGuard(QObject):
    """An event filter: the wheel over an unfocused box goes to the scroll area around it instead."""

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if event.type() != QEvent.Type.Wheel or not isinstance(watched, QWidget) or watched.hasFocus():
            return False
        area = enclosing_scroll_area(watched)
        if area is None:
            return False
        viewport = area.viewport()
        passed_on = QWheelEvent(viewport.mapFromGlobal(event.globalPosition()), event.globalPosition(),
                                event.pixelDelta(), event.angleDelta(), event.buttons(), event.modifiers(),
                                event.phase(), event.inverted(), event.source())
        QApplication.sendEvent(viewport, passed_on)
        return True  # the box never sees it


def guard_wheel_in_scroll_areas(root: QWidget) -> WheelGuard:
    """Make every spin box and combo box under ``root`` that sits in a scroll area take the wheel only when
    focused; call it once the widgets are built. Returns the guard (a child of ``root``)."""
    guard = WheelGuard(root)
    boxes: list[QWidget] = [*root.findChildren(QAbstractSpinBox), *root.findChildren(QComboBox)]
    for box in boxes:
        if enclosing_scroll_area(box) is not None:
            box.setFocusPolicy(Qt.FocusPolicy.StrongFocus)  # the wheel must not give focus either
            box.installEventFilter(guard)
    return guard
