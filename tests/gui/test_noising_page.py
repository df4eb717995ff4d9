"""The Noising page: the sample picture, scrubbing t through the closed form, drops it cannot use, denoising from t."""

import numpy as np
import pytest
from PIL import Image

from ddpm_studio.core.data.folders import load_image
from ddpm_studio.gui.pages.noising import WORKING_SIZE
from ddpm_studio.paths import SAMPLE_PICTURE
from tests.helpers.drops import drag_enter_event
from tests.helpers.drops import send_drop as drop
from tests.helpers.windows import add_window


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.astype(np.float64).ravel(), b.astype(np.float64).ravel())[0, 1])


@pytest.fixture
def picture_file(tmp_path):
    """A 200 x 160 picture with broad shapes, so it correlates with itself and not with noise."""
    ys, xs = np.mgrid[0:160, 0:200]
    red = (xs * 255 / 199).astype(np.uint8)
    green = (ys * 255 / 159).astype(np.uint8)
    blue = np.where((xs - 100) ** 2 + (ys - 80) ** 2 < 50**2, 230, 20).astype(np.uint8)
    path = tmp_path / "shapes.png"
    Image.fromarray(np.stack([red, green, blue], axis=2)).save(path)
    return path


@pytest.fixture
def page(window):
    page = window.noising_page
    window.tabs.setCurrentWidget(page)
    return page


def test_the_sample_picture_is_shown_at_first(page):
    if not SAMPLE_PICTURE.is_file():
        pytest.skip("the project has no sample picture")
    assert page.source_path == SAMPLE_PICTURE
    assert page.working_image_view.image().shape == (WORKING_SIZE, WORKING_SIZE, 3)
    # Without a model: the paper's schedule, a third of the way in.
    assert page.t_slider.maximum() == 1000 and page.current_t() == 333


def test_scrubbing_goes_from_the_picture_to_noise(page, picture_file):
    assert page.load_image(picture_file)
    expected, _ = load_image(picture_file, WORKING_SIZE, 3)
    expected = expected.transpose(1, 2, 0)
    view = page.working_image_view

    page.set_t(0)
    assert np.array_equal(view.image(), expected)
    page.set_t(1000)
    noise_r = correlation(view.image(), expected)
    assert abs(noise_r) < 0.1
    page.set_t(250)
    middle_r = correlation(view.image(), expected)
    assert abs(noise_r) < middle_r < 0.999
    assert "t = 250 of 1000" in page.t_label.text()

    # Fixed noise: coming back to t shows the very same frame; another seed shows another.
    frame = view.image().copy()
    page.set_t(600)
    page.set_t(250)
    assert np.array_equal(view.image(), frame)
    page.seed_spin.setValue(1)
    assert not np.array_equal(view.image(), frame)

    # The plots' cursors follow t, and dragging a cursor moves t.
    assert page.alpha_bar_plot.cursor.value() == 250 == page.log_snr_plot.cursor.value()
    page.log_snr_plot.cursor.setValue(700)
    assert page.current_t() == 700 and page.alpha_bar_plot.cursor.value() == 700


def test_dropping_a_picture_loads_it(page, picture_file):
    assert drop(page, [picture_file])
    assert page.source_path == picture_file
    assert "shapes.png" in page.source_label.text()


def test_dropping_a_file_that_is_not_a_picture_explains_itself(page, picture_file, tmp_path):
    page.load_image(picture_file)
    shown = page.working_image_view.image().copy()
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture", encoding="utf-8")
    assert drop(page, [notes])
    message = page.image_message
    assert message.isVisible()
    assert message.text() == "notes.txt cannot be noised (not an image)."
    assert page.source_path == picture_file and np.array_equal(page.working_image_view.image(), shown)

    # A folder is left to the window, which opens datasets and models; given one anyway, the page explains.
    enter = drag_enter_event([tmp_path])
    page.dragEnterEvent(enter)
    assert not enter.isAccepted()
    page.handle_drop([tmp_path])
    assert "Dataset page" in message.text()


def test_denoise_from_t_plays_on_the_timeline(qtbot, window, page, tiny_model, picture_file):
    assert not page.denoise_button.isEnabled()  # no model yet
    window.library.open(tiny_model)
    assert page.model_chooser.select(tiny_model)
    page.load_image(picture_file)
    assert page.t_slider.maximum() == 50
    assert page.model_image_view.image().shape == (16, 16, 3)

    page.set_t(0)
    assert not page.denoise_button.isEnabled()
    page.set_t(20)
    assert page.denoise_button.isEnabled()
    start = page.model_image_view.image().copy()
    assert np.array_equal(start, page.model_view.x_t(20))
    assert page.denoise() is not None
    qtbot.waitUntil(lambda: page.runner is None, timeout=60_000)

    timeline = page.timeline
    assert page.result is not None
    assert timeline.frame_count() == 21 and page.result.trajectory.timesteps[0] == 20
    assert timeline.current_frame() == 0
    assert np.array_equal(timeline.x_t_view.image(), start)  # the reverse process starts from the x_t shown
    timeline.set_frame(timeline.frame_count() - 1)
    assert np.array_equal(timeline.x_t_view.image(), page.result.images[0].numpy().transpose(1, 2, 0))
    assert page.result.metadata["start_t"] == "20"

    page.sampler_box.setCurrentIndex(page.sampler_box.findData("ddim"))
    page.steps_spin.setValue(5)
    page.denoise()
    qtbot.waitUntil(lambda: page.runner is None, timeout=60_000)
    assert timeline.frame_count() == 6

    # The variance of the ancestral steps is the user's to choose here too.
    page.sampler_box.setCurrentIndex(page.sampler_box.findData("ddpm"))
    assert page.variance_box.isEnabled()
    page.variance_box.setCurrentIndex(page.variance_box.findData("fixed_small"))
    page.denoise()
    qtbot.waitUntil(lambda: page.runner is None, timeout=60_000)
    assert page.result.request.variance == "fixed_small" and page.result.request.sampler == "ddpm"


def test_stop_ends_denoising(qtbot, window, page, tiny_model):
    window.library.open(tiny_model)
    page.model_chooser.select(tiny_model)
    page.set_t(50)
    page.denoise()
    assert page.stop_button.isEnabled()
    page.stop()
    qtbot.waitUntil(lambda: page.runner is None, timeout=60_000)
    assert page.result is None and page.status_label.text() == "Stopped."
    assert page.denoise_button.isEnabled()


class LayoutRequests:
    """Counts the layout requests the window's widgets receive (each one re-lays out and repaints a page)."""

    def __init__(self):
        from PySide6.QtCore import QEvent, QObject

        outer = self

        class Filter(QObject):
            def eventFilter(self, obj, event):
                if event.type() == QEvent.Type.LayoutRequest:
                    outer.count += 1
                return False

        self.count = 0
        self.filter = Filter()


def test_scrubbing_t_repaints_in_place_without_a_new_layout(qtbot, window, page, picture_file):
    """The labels that change at every t hold their size, so a move of t asks for no layout of the page."""
    from PySide6.QtWidgets import QApplication

    window.show()
    qtbot.waitExposed(window)
    assert page.load_image(picture_file)
    page.t_slider.setValue(400)
    qtbot.wait(300)  # the first layout of the shown window, and the picture's
    requests = LayoutRequests()
    QApplication.instance().installEventFilter(requests.filter)
    try:
        for t in (1, 9, 10, 99, 100, 999, 1000, 500):  # labels of every width, down to log SNR at t = 1
            page.t_slider.setValue(t)
            QApplication.instance().processEvents()
    finally:
        QApplication.instance().removeEventFilter(requests.filter)
    assert requests.count == 0
    assert page.t_label.text().startswith("t = 500 of 1000")
    for label in (page.t_label, page.alpha_bar_label, page.log_snr_label):
        assert label.fontMetrics().horizontalAdvance(label.text()) <= label.width()  # the text fits its fixed size


def test_after_a_restart_with_a_model_chosen_denoise_is_ready_for_the_sample_picture(
        qtbot, settings, models_dir, user_models_dir, tiny_model):
    """The model is restored before the picture is loaded; the picture at its resolution then enables Denoise."""
    import shutil

    from PySide6.QtCore import Qt

    from ddpm_studio.gui.main_window import MainWindow
    from ddpm_studio.gui.model_library import ModelLibrary

    if not SAMPLE_PICTURE.is_file():
        pytest.skip("the project has no sample picture")
    model = models_dir / "tiny"
    shutil.copytree(tiny_model, model)
    settings.setValue("noising/model", str(model))
    window = MainWindow(settings=settings, library=ModelLibrary([models_dir, user_models_dir]))
    add_window(qtbot, window)
    window.show()
    try:
        page = window.noising_page
        window.tabs.setCurrentWidget(page)
        qtbot.waitUntil(lambda: page.source_path == SAMPLE_PICTURE)
        assert page.model_chooser.current_path() == model and page.current_t() > 0
        assert page.denoise_button.isEnabled()
        qtbot.mouseClick(page.denoise_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: page.result is not None, timeout=60_000)
        assert page.result.trajectory.timesteps[0] == page.current_t()
    finally:
        window.confirm_close = False
        window.close()
        qtbot.waitUntil(lambda: window.closed, timeout=60_000)  # a denoising still ending stops first


def test_open_starts_in_the_folder_of_the_picture_shown(qtbot, page, picture_file):
    """The real dialog is opened by a click on Open image… and read before it is closed."""
    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QFileDialog

    from tests.helpers.windows import when_shown

    page.context.settings.setValue("last_image_dir", "")  # nothing opened through the dialog yet
    assert drop(page, [picture_file])
    seen = when_shown(QFileDialog, lambda dialog: dialog.directory().absolutePath(), QFileDialog.reject)
    qtbot.mouseClick(page.open_button, Qt.MouseButton.LeftButton)
    assert seen == [str(picture_file.parent)]


def test_a_grey_picture_gives_no_warning(page, tmp_path):
    import warnings

    grey = tmp_path / "grey.png"
    Image.fromarray(np.tile(np.arange(200, dtype=np.uint8), (160, 1)), "L").save(grey)
    decoded, _ = load_image(grey, WORKING_SIZE, 1)
    assert not decoded.flags.writeable  # what the forward process is given for a grey picture
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "NumPy array is not writable" would fail the test
        from ddpm_studio.core.diffusion.noising import ForwardProcessView

        view = ForwardProcessView(decoded, page.schedule, seed=0)
        assert page.load_image(grey)
    assert np.array_equal(view.x_t(0), decoded[0])  # t = 0 is the picture itself, one channel


def test_switching_model_says_whose_reverse_process_is_shown(qtbot, window, page, tiny_model, models_dir,
                                                            picture_file):
    import shutil

    from PySide6.QtCore import Qt

    other = models_dir / "other"
    shutil.copytree(tiny_model, other)
    window.library.refresh()
    window.library.open(tiny_model)
    assert page.model_chooser.select(tiny_model)
    page.load_image(picture_file)
    page.set_t(10)
    assert not page.reverse_caption.isVisible()  # nothing denoised yet, nothing to name
    qtbot.mouseClick(page.denoise_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: page.runner is None, timeout=60_000)
    assert page.reverse_caption.isVisible() and "tiny's, from t = 10" in page.reverse_caption.text()
    assert "not the chosen" not in page.reverse_caption.text()

    assert page.model_chooser.select(other)
    assert page.timeline.trajectory is not None  # the result stays to look at, and says whose it is
    assert "tiny's" in page.reverse_caption.text() and "not the chosen model's" in page.reverse_caption.text()
    assert "other's" in page.reverse_caption.text()
    assert page.model_chooser.select(tiny_model)
    assert "not the chosen" not in page.reverse_caption.text()
