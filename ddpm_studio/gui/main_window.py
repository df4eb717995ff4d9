"""The studio window: seven pages (Dataset, Train, Generate, Noising, Interpolate, Evaluate, Likelihood), menus,
drops and the status bar."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSettings, QTimer
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QFileDialog, QLabel, QMainWindow, QMessageBox, QTabWidget

from ddpm_studio import __version__
from ddpm_studio.core.data.cache import cache_dir, clear_cache, list_cache_entries
from ddpm_studio.core.model.exporter import ExportResult, export_job
from ddpm_studio.core.model.importer import (
    ImportFinished,
    ImportProgress,
    destination_for,
    import_diffusers,
    is_diffusers_folder,
)
from ddpm_studio.core.model.store import ModelError
from ddpm_studio.core.system.devices import choose_device, describe_device, device_memory_bytes, memory_in_use_bytes
from ddpm_studio.gui.context import StudioContext
from ddpm_studio.gui.drops import paths_from_mime
from ddpm_studio.gui.garbage import GuiThreadGarbageCollector
from ddpm_studio.gui.jobs.closing import ClosingOverlay
from ddpm_studio.gui.jobs.controller import JobController
from ddpm_studio.gui.jobs.workers import busy_job_names, stop_all_jobs
from ddpm_studio.gui.model_library import ModelLibrary
from ddpm_studio.gui.pages.dataset import DatasetPage
from ddpm_studio.gui.pages.evaluate import EvaluatePage
from ddpm_studio.gui.pages.generate import GeneratePage
from ddpm_studio.gui.pages.interpolate import InterpolatePage
from ddpm_studio.gui.pages.likelihood import LikelihoodPage
from ddpm_studio.gui.pages.noising import NoisingPage
from ddpm_studio.gui.pages.train import TrainPage
from ddpm_studio.gui.session_memory import reopen_dataset
from ddpm_studio.gui.widgets.wheel_guard import guard_wheel_in_scroll_areas


def device_status() -> str:
    device = choose_device("auto")
    in_use = memory_in_use_bytes(device)
    if device.type == "cuda":
        total = device_memory_bytes(device)
        return f"{describe_device(device)} · GPU memory {in_use / 2**30:.1f} of {total / 2**30:.1f} GiB in use"
    return "Device: CPU (no CUDA GPU found)" + (f" · {in_use / 2**20:,.0f} MiB in use" if in_use else "")


class MainWindow(QMainWindow):
    def __init__(self, settings: QSettings | None = None, library: ModelLibrary | None = None):
        super().__init__()
        self.closed = False  # set once a close was accepted
        self.garbage_collector = GuiThreadGarbageCollector(self)  # cycles are freed in this thread only
        self.garbage_collector.start()
        self.setWindowTitle("DDPM Studio")
        self.settings = settings or QSettings("DDPM Studio", "DDPM Studio")
        self.library = library or ModelLibrary()
        self.imports = JobController(self, "import", with_controls=False)  # diffusers folders, off the GUI thread
        self.exports = JobController(self, "export", with_controls=False)  # likewise, the other way
        self.context = StudioContext(self.settings, self.library, self.show_message)

        self.tabs = QTabWidget()
        self.dataset_page = DatasetPage(self.context)
        self.train_page = TrainPage(self.context)
        self.generate_page = GeneratePage(self.context)
        self.noising_page = NoisingPage(self.context)
        self.interpolate_page = InterpolatePage(self.context)
        self.evaluate_page = EvaluatePage(self.context)
        self.likelihood_page = LikelihoodPage(self.context)
        self.tabs.addTab(self.dataset_page, "1 · Dataset")
        self.tabs.addTab(self.train_page, "2 · Train")
        self.tabs.addTab(self.generate_page, "3 · Generate")
        self.tabs.addTab(self.noising_page, "4 · Noising")
        self.tabs.addTab(self.interpolate_page, "5 · Interpolate")
        self.tabs.addTab(self.evaluate_page, "6 · Evaluate")
        self.tabs.addTab(self.likelihood_page, "7 · Likelihood")
        self.setCentralWidget(self.tabs)
        self.pages = [self.dataset_page, self.train_page, self.generate_page, self.noising_page, self.interpolate_page,
                      self.evaluate_page, self.likelihood_page]
        self.wheel_guard = guard_wheel_in_scroll_areas(self.tabs)  # scrolling a column changes no setting

        self.dataset_page.datasetReady.connect(self.train_page.set_dataset)
        self.dataset_page.nextRequested.connect(lambda: self.tabs.setCurrentWidget(self.train_page))
        self.train_page.modelSaved.connect(self.on_model_saved)

        self.device_label = QLabel(device_status())
        self.statusBar().addPermanentWidget(self.device_label)
        self.status_timer = QTimer(self)
        self.status_timer.setInterval(2000)
        self.status_timer.timeout.connect(lambda: self.device_label.setText(device_status()))
        self.status_timer.start()

        self.closing = ClosingOverlay(self, self.tabs, self._close_after_jobs)  # "Saving…" while jobs stop
        self.jobs_stopped = False  # set once a close has waited for the running jobs

        self.build_menus()
        self.setAcceptDrops(True)
        self.restore_settings()
        self.confirm_close = True  # tests turn the question off or answer it

    # --- menus ------------------------------------------------------------------------------------
    def build_menus(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        open_dataset = QAction("Open &dataset folder…", self)
        open_dataset.setShortcut(QKeySequence("Ctrl+D"))
        open_dataset.triggered.connect(self.choose_dataset)
        open_model = QAction("Open &model folder…", self)
        open_model.setShortcut(QKeySequence.StandardKey.Open)
        open_model.triggered.connect(self.choose_model)
        open_image = QAction("Open &image for noising…", self)
        open_image.triggered.connect(self.choose_image)
        quit_action = QAction("&Quit", self)
        quit_action.setShortcut(QKeySequence.StandardKey.Quit)
        quit_action.triggered.connect(self.close)
        self.export_model_action = QAction("&Export model…", self)
        self.export_model_action.setToolTip("Write the Generate page's model in diffusers' format "
                                            "(DDPMPipeline.from_pretrained loads it).")
        self.export_model_action.triggered.connect(self.choose_export)
        for action in (open_dataset, open_model, open_image, self.export_model_action):
            file_menu.addAction(action)
        file_menu.addSeparator()
        self.clear_cache_action = QAction("Clear dataset &cache…", self)
        self.clear_cache_action.setToolTip("Remove the decoded images that let a folder train without decoding again.")
        self.clear_cache_action.triggered.connect(self.clear_dataset_cache)
        file_menu.addAction(self.clear_cache_action)
        file_menu.addSeparator()
        file_menu.addAction(quit_action)
        help_menu = self.menuBar().addMenu("&Help")
        about = QAction("&About DDPM Studio", self)
        about.triggered.connect(self.show_about)
        help_menu.addAction(about)

    def choose_dataset(self) -> None:
        start = self.settings.value("last_dataset_dir", str(Path.home()))
        folder = QFileDialog.getExistingDirectory(self, "Choose a folder of images", start)
        if folder:
            self.settings.setValue("last_dataset_dir", folder)
            self.tabs.setCurrentWidget(self.dataset_page)
            self.dataset_page.scan([Path(folder)])

    def choose_model(self) -> None:
        start = self.settings.value("last_model_dir", str(Path.home()))
        folder = QFileDialog.getExistingDirectory(
            self, "Choose a model folder (DDPM Studio's, or a diffusers one such as google/ddpm-church-256)", start)
        if folder:
            self.settings.setValue("last_model_dir", folder)
            self.open_model(Path(folder))

    def open_model(self, path: Path) -> bool:
        """Open a model folder; a diffusers-format folder is imported first, in the background."""
        if is_diffusers_folder(path):
            self.import_model(path)
            return True
        try:
            info = self.library.open(path)
        except ModelError as error:
            QMessageBox.warning(self, "Cannot open model", str(error))
            return False
        self.generate_page.select_model(info.path)
        self.show_message(f"Opened model {info.name}.")
        return True

    def choose_export(self) -> None:
        """Export the Generate page's model to a chosen folder, in diffusers' format, in a worker thread."""
        model = self.generate_page.model_chooser.current_path()
        if model is None:
            QMessageBox.information(self, "Export model", "Open or train a model first; File > Export model… "
                                                          "writes the model chosen on the Generate page.")
            return
        start = self.settings.value("last_export_dir", str(Path.home()))
        folder = QFileDialog.getExistingDirectory(self, f"Export {model.name} to a new or empty folder", start)
        if not folder:
            return
        out = Path(folder)
        self.settings.setValue("last_export_dir", str(out.parent))
        overwrite = False
        if out.is_dir() and any(out.iterdir()):
            answer = QMessageBox.question(
                self, "Export model", f"{out} is not empty. Replace what it holds with the export of {model.name}?",
                QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No)
            if answer != QMessageBox.StandardButton.Yes:
                return
            overwrite = True

        def finished(event) -> None:
            if isinstance(event, ExportResult):
                self.show_message(f"Exported {model.name} to {event.path}.")
                QMessageBox.information(
                    self, "Model exported",
                    f"Wrote {model.name} in diffusers' format to {event.path}. Load it with "
                    f"diffusers.DDPMPipeline.from_pretrained(\"{event.path}\").")

        def failed(message: str) -> None:
            self.show_message("")
            QMessageBox.warning(self, "Cannot export model", message)

        self.show_message(f"Exporting {model.name}…", 0)
        self.exports.run(lambda: export_job(model, out, overwrite), name=f"export {model.name}",
                         on_event=finished, on_error=failed)

    def import_model(self, source: Path) -> None:
        """Import a diffusers-format folder into the user models folder in a worker thread, then open it."""
        try:
            out, imported_before = destination_for(source)
        except OSError as error:
            QMessageBox.warning(self, "Cannot import model", f"{source}: {error.strerror or error}.")
            return
        if imported_before:
            self.open_model(out)
            self.show_message(f"{source.name} was imported before; opened {out.name}.")
            return

        def progress(event: ImportProgress) -> None:
            if event.stage == "reading" and event.total:
                self.show_message(
                    f"Importing {source.name}: reading its weights, {100 * event.done // event.total}%…", 0)

        def finished(event) -> None:
            if isinstance(event, ImportFinished):
                self.library.refresh()
                self.open_model(event.path)
                self.tabs.setCurrentWidget(self.generate_page)
                self.show_message(f"Imported {source.name} as {event.path.name} in {event.seconds:.1f} s.")

        def failed(message: str) -> None:
            self.show_message("")
            QMessageBox.warning(self, "Cannot import model", message)

        self.show_message(f"Importing {source.name}…", 0)
        self.imports.run(lambda: import_diffusers(source, out), name=f"import {source.name}",
                         progress_types=(ImportProgress,), on_progress=progress, on_event=finished, on_error=failed)

    def choose_image(self) -> None:
        file, _ = QFileDialog.getOpenFileName(self, "Choose an image", self.noising_page.image_folder(),
                                              "Images (*.png *.jpg *.jpeg *.bmp *.gif *.webp *.tif *.tiff)")
        if file:
            self.settings.setValue("last_image_dir", str(Path(file).parent))
            self.tabs.setCurrentWidget(self.noising_page)
            self.noising_page.load_image(Path(file))

    def clear_dataset_cache(self) -> None:
        """Ask, then remove every decoded dataset from the cache folder."""
        entries = list_cache_entries()
        if not entries:
            QMessageBox.information(self, "Dataset cache", f"The dataset cache is empty ({cache_dir()}).")
            return
        size = sum(entry.size_bytes for entry in entries)
        if self.train_page.is_training():
            QMessageBox.information(self, "Dataset cache", "Stop training before clearing the dataset cache.")
            return
        answer = QMessageBox.question(
            self, "Clear the dataset cache?",
            f"Remove {len(entries)} decoded dataset{'s' if len(entries) != 1 else ''} "
            f"({size / 2**20:,.0f} MiB) from {cache_dir()}? Folders are decoded again when next used.",
        )
        if answer == QMessageBox.StandardButton.Yes:
            count, freed = clear_cache()
            self.show_message(f"Cleared the dataset cache: {count} dataset{'s' if count != 1 else ''}, "
                              f"{freed / 2**20:,.0f} MiB.")

    def about_text(self) -> str:
        return (f"<b>DDPM Studio {__version__}</b><br>DDPM Studio trains Denoising Diffusion Probabilistic Models "
                "(Ho, Jain and Abbeel, 2020) on your images and shows every step of the process.")

    def show_about(self) -> None:
        QMessageBox.about(self, f"About DDPM Studio {__version__}", self.about_text())

    def show_message(self, message: str, timeout_ms: int = 8000) -> None:
        if self.closed:
            return  # late news from a job that ended during the close; its timeout timer would outlive the window
        self.statusBar().showMessage(message, timeout_ms)

    def on_model_saved(self, path: Path) -> None:
        self.library.refresh()

    # --- drops --------------------------------------------------------------------------------------
    def dragEnterEvent(self, event) -> None:
        if paths_from_mime(event.mimeData()) and not self.closing.waiting:
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        paths = paths_from_mime(event.mimeData())
        if not paths:
            return
        event.acceptProposedAction()
        page = self.tabs.currentWidget()
        if page is self.noising_page and len(paths) == 1 and paths[0].is_file():
            self.noising_page.handle_drop(paths)
            return
        if page is self.interpolate_page and len(paths) <= 2 and all(path.is_file() for path in paths):
            self.interpolate_page.handle_drop(paths)
            return
        if len(paths) == 1 and ((paths[0] / "model.json").is_file() or is_diffusers_folder(paths[0])):
            self.open_model(paths[0])
            self.tabs.setCurrentWidget(self.generate_page)
            return
        self.tabs.setCurrentWidget(self.dataset_page)
        self.dataset_page.handle_drop(paths)

    # --- settings and closing -----------------------------------------------------------------------
    def restore_settings(self) -> None:
        geometry = self.settings.value("window_geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
        else:
            self.resize(1280, 860)
        self.tabs.setCurrentIndex(int(self.settings.value("current_tab", 0)))
        # Now that the Train page hears of it.
        reopen_dataset(self.settings, self.dataset_page.scan_again, self.dataset_page.show_note)

    def closeEvent(self, event) -> None:
        if self.closing.waiting:
            event.ignore()  # closed again while saving: the window closes once its jobs have ended
            return
        busy = [] if self.jobs_stopped else busy_job_names()
        if busy and self.confirm_close:
            answer = QMessageBox.question(
                self, "Stop running work?",
                "Still running: " + "; ".join(busy) + ".\n\nStop it and quit? A training run is saved first.",
                QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No,
            )
            if answer != QMessageBox.StandardButton.Yes:
                event.ignore()
                return
        if busy:
            event.ignore()  # not yet: the window keeps painting while the jobs stop, then closes
            self.stop_jobs_then_close(busy)
            return
        self.status_timer.stop()
        self.statusBar().clearMessage()  # stops the status bar's own timer for a timed message
        for page in self.pages:
            page.shutdown()
        if not self.closing.left_behind:
            stop_all_jobs()  # quiet work (a memory estimate) ends within a step; the rest has ended already
        self.settings.setValue("window_geometry", self.saveGeometry())
        self.settings.setValue("current_tab", self.tabs.currentIndex())
        for page in self.pages:
            page.save_settings()
        self.closed = True
        self.garbage_collector.stop()
        event.accept()

    def stop_jobs_then_close(self, busy: list[str]) -> None:
        """Ask every job to stop, show "Saving…" over the disabled pages, and close once all have ended."""
        for page in self.pages:
            page.shutdown()  # no new work
        self.tabs.setEnabled(False)
        self.menuBar().setEnabled(False)
        for action in self.findChildren(QAction):
            action.setEnabled(False)
        run = self.train_page.run_path if self.train_page.is_training() else None
        if run is not None:
            title = "Saving…"
            sentence = (f"Saving the training run before closing: “{run.name}” stops after its current step "
                        "and writes its checkpoint. The window closes once it is saved.")
        else:
            title, sentence = "Closing…", f"Stopping {'; '.join(busy)} before closing…"
        self.statusBar().showMessage(sentence)
        self.closing.start(title, sentence)

    def _close_after_jobs(self) -> None:
        self.jobs_stopped = True
        self.close()
