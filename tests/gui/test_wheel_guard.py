"""The mouse wheel over a setting in a scrolling column scrolls the column; it changes the setting only once the
setting has focus (real wheel events, sent to the box, where one from the window system arrives once the box's
text field has passed it up)."""

from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QWheelEvent
from PySide6.QtWidgets import QApplication

from ddpm_studio.gui.widgets.wheel_guard import enclosing_scroll_area

NOTCH = 120  # one step of a mouse wheel, in eighths of a degree


def turn_wheel(widget, notches: int) -> None:
    """Turn the wheel by ``notches`` (negative: towards the user, which scrolls down) over ``widget``'s centre."""
    centre = QPointF(widget.rect().center())
    event = QWheelEvent(centre, QPointF(widget.mapToGlobal(centre)), QPoint(0, 0), QPoint(0, notches * NOTCH),
                        Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase, False)
    QApplication.sendEvent(widget, event)


def test_the_wheel_scrolls_the_settings_column_until_checkpoint_every_has_focus(window, qtbot):
    window.resize(1100, 420)  # short enough for the Train page's settings column to scroll
    window.tabs.setCurrentWidget(window.train_page)
    window.train_page.form.advanced_button.setChecked(True)  # "Checkpoint every" is an advanced setting
    spin = window.train_page.form.checkpoint_every_spin
    scroll_bar = enclosing_scroll_area(spin).verticalScrollBar()
    qtbot.waitUntil(lambda: scroll_bar.maximum() > 0)
    spin.setValue(1500)
    qtbot.waitUntil(spin.isVisible)
    enclosing_scroll_area(spin).ensureWidgetVisible(spin)
    if scroll_bar.value() == scroll_bar.maximum():  # room to scroll down, with the box still under the pointer
        scroll_bar.setValue(scroll_bar.maximum() - 40)
    start = scroll_bar.value()

    turn_wheel(spin, -1)
    assert spin.value() == 1500 and not spin.hasFocus()
    assert scroll_bar.value() > start  # the column scrolled instead
    assert spin.focusPolicy() == Qt.FocusPolicy.StrongFocus  # and the wheel did not give it focus

    window.activateWindow()
    spin.setFocus(Qt.FocusReason.MouseFocusReason)
    qtbot.waitUntil(spin.hasFocus)
    turn_wheel(spin, -1)
    assert spin.value() == 1500 - spin.singleStep()  # one step of 500


def test_every_box_in_a_scrolling_column_is_guarded(window):
    from PySide6.QtWidgets import QAbstractSpinBox, QComboBox

    boxes = [box for page in window.pages for kind in (QAbstractSpinBox, QComboBox) for box in page.findChildren(kind)]
    in_columns = [box for box in boxes if box.focusPolicy() == Qt.FocusPolicy.StrongFocus]
    assert window.train_page.form.checkpoint_every_spin in in_columns
    assert window.generate_page.count_spin in in_columns  # a column made by the shared settings_column helper
