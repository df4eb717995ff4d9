"""Widgets and layouts stacked top to bottom: a titled box of them, or any column; how the pages build theirs."""

from __future__ import annotations

from PySide6.QtWidgets import QBoxLayout, QGroupBox, QLayout, QVBoxLayout, QWidget

BoxItem = QWidget | QLayout | tuple[QWidget | QLayout, int]  # a widget or layout, or (one of them, its stretch)


def stacked_box(title: str, *items: BoxItem) -> QGroupBox:
    """A QGroupBox titled ``title`` holding ``items`` in a column; an item given as (item, stretch) grows by stretch."""
    box = QGroupBox(title)
    add_items(QVBoxLayout(box), items)
    return box


def add_items(layout: QBoxLayout, items: tuple[BoxItem, ...]) -> None:
    """Add widgets and layouts to ``layout`` in order, each (item, stretch) with its stretch."""
    for item in items:
        item, stretch = item if isinstance(item, tuple) else (item, 0)
        if isinstance(item, QLayout):
            layout.addLayout(item, stretch)
        else:
            layout.addWidget(item, stretch)
