"""Placeholder for the generate page (being written)."""

from PySide6.QtCore import Signal

from .page import Page


class GeneratePage(Page):
    datasetReady = Signal(object)
    modelSaved = Signal(object)

    def set_dataset(self, result):
        pass

    def select_model(self, path):
        pass

    def scan(self, paths):
        pass

    def load_image(self, path):
        pass
