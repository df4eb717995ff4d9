"""Real drag-and-drop for tests: QDragEnterEvent and QDropEvent carrying file URLs, as a file manager sends them."""

from pathlib import Path

from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QApplication

ARGUMENTS = (Qt.DropAction.CopyAction, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)


def mime_for(paths: list[Path]) -> QMimeData:
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path)) for path in paths])
    return mime


def drag_enter_event(paths: list[Path]) -> QDragEnterEvent:
    action, buttons, modifiers = ARGUMENTS
    mime = mime_for(paths)
    try:
        event = QDragEnterEvent(QPoint(20, 20), action, mime, buttons, modifiers)
    except TypeError:  # the position's type differs between PySide6 releases
        event = QDragEnterEvent(QPointF(20, 20), action, mime, buttons, modifiers)
    event.mime = mime  # keep the data alive as long as the event
    event.ignore()
    return event


def send_drop(target, paths: list[Path]) -> bool:
    """Send a drag-enter and, if the target accepts it, the drop; True if accepted."""
    enter = drag_enter_event(paths)
    QApplication.sendEvent(target, enter)
    if not enter.isAccepted():
        return False
    action, buttons, modifiers = ARGUMENTS
    QApplication.sendEvent(target, QDropEvent(QPointF(20, 20), action, enter.mime, buttons, modifiers))
    return True
