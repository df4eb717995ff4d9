"""The studio window: PySide6 and pyqtgraph views over the core engine. No diffusion mathematics here."""
