"""Make the README's screenshots from the real window, in realistic states, with the shipped demo model.

    QT_QPA_PLATFORM=offscreen python docs/screenshots.py [OUT_DIR [PAGE ...]]

It writes dataset.png (after scanning 300 demo images), train.png (the small preset mid-run on
them), generate.png (16 DDPM samples from the demo model, one on the timeline part-way),
noising.png (the sample picture at t = 300, denoised from there by the demo model),
likelihood.png (the demo model's likelihood bound on 4 held-out demo images, every timestep),
rate_distortion_window.png (the same pass on the Rate-distortion tab, the cursor after 900 reverse steps),
dataset_classes.png (300 demo images in one subfolder per shape) and generate_classes.png (the
class-conditional shapes model, All classes, w = 3).
PAGE names limit it to some of them (dataset, train, generate, noising, likelihood, classes). Settings and
new models go to a temporary folder, so nothing of the user's is touched.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from ddpm_studio.gui.event_loop import settle, wait_until  # Qt-free: the platform is still chosen before Qt loads

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def main() -> int:
    out_dir = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent)
    out_dir.mkdir(parents=True, exist_ok=True)
    pages = set(sys.argv[2:]) or {"dataset", "train", "generate", "noising", "likelihood", "classes"}
    scratch = Path(tempfile.mkdtemp(prefix="ddpm-shots-"))
    os.environ["DDPM_STUDIO_MODELS"] = str(scratch / "models")

    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication

    from ddpm_studio.gui.main_window import MainWindow

    app = QApplication([])
    window = MainWindow(settings=QSettings(str(scratch / "settings.ini"), QSettings.Format.IniFormat))
    window.resize(1400, 900)
    window.show()
    settle(app)

    if {"dataset", "train"} & pages:
        shoot_dataset_and_train(app, window, scratch, out_dir)
    if "generate" in pages:
        shoot_generate(app, window, out_dir)
    if "noising" in pages:
        shoot_noising(app, window, out_dir)
    if "likelihood" in pages:
        shoot_likelihood(app, window, scratch, out_dir)
    if "classes" in pages:
        shoot_classes(app, window, scratch, out_dir)

    window.confirm_close = False
    window.close()
    print(f"Screenshots written to {out_dir}")
    return 0


def scan_and_shoot(app, window, data: Path, shot: Path) -> None:
    """The Dataset page after scanning ``data``, saved to ``shot``."""
    page = window.dataset_page
    window.tabs.setCurrentWidget(page)
    page.scan([data])
    wait_until(app, lambda: not page.is_scanning() and window.train_page.dataset is not None)
    settle(app)
    window.grab().save(str(shot))


def shoot_dataset_and_train(app, window, scratch: Path, out_dir: Path) -> None:
    from ddpm_studio.core.data.demo import create_demo_dataset

    data = scratch / "shapes"
    create_demo_dataset(data, count=300, seed=3)
    scan_and_shoot(app, window, data, out_dir / "dataset.png")

    train = window.train_page
    window.tabs.setCurrentWidget(train)
    train.form.preset_combo.setCurrentIndex(train.form.preset_combo.findData("small"))
    train.form.batch_spin.setValue(16)
    train.form.steps_spin.setValue(3000)
    train.form.preview_every_spin.setValue(100)
    train.name_edit.setText("shapes")
    train.start_training()
    wait_until(app, lambda: train.loss_plot.point_count() >= 320)
    settle(app, 1.0)
    window.grab().save(str(out_dir / "train.png"))
    train.stop_training()
    wait_until(app, lambda: not train.is_training())


def shoot_generate(app, window, out_dir: Path) -> None:
    generate = window.generate_page
    window.tabs.setCurrentWidget(generate)
    generate.select_model(Path(__file__).resolve().parents[1] / "models" / "demo")
    generate.sampler_box.setCurrentIndex(generate.sampler_box.findData("ddpm"))
    generate.count_spin.setValue(16)
    generate.seed_spin.setValue(2)
    generate.generate()
    wait_until(app, lambda: generate.runner is None)
    generate.grid.setCurrentRow(5)
    generate.grid.imageActivated.emit(5)
    generate.timeline.set_frame(int(generate.timeline.frame_count() * 0.9))
    settle(app)
    window.grab().save(str(out_dir / "generate.png"))


def shoot_noising(app, window, out_dir: Path) -> None:
    noising = window.noising_page
    window.tabs.setCurrentWidget(noising)
    settle(app)
    noising.set_t(300)
    noising.denoise()
    wait_until(app, lambda: not noising.jobs.is_running())
    settle(app, 1.0)  # the finished run arrives as a queued signal, and resets the timeline
    noising.timeline.set_frame(int(noising.timeline.frame_count() * 0.6))
    settle(app)
    window.grab().save(str(out_dir / "noising.png"))


def shoot_likelihood(app, window, scratch: Path, out_dir: Path) -> None:
    import shutil

    from ddpm_studio.core.data.demo import create_demo_dataset

    model = scratch / "demo"  # a copy: evaluating records the result in the model's model.json
    shutil.copytree(Path(__file__).resolve().parents[1] / "models" / "demo", model)
    held_out = scratch / "held-out"
    create_demo_dataset(held_out, count=4, seed=11)  # a seed the demo model never trained on
    evaluate = window.likelihood_page
    window.tabs.setCurrentWidget(evaluate)
    window.library.open(model)
    evaluate.model_chooser.select(model)
    evaluate.data_edit.setText(str(held_out))
    evaluate.count_spin.setValue(4)
    evaluate.timesteps_combo.setCurrentIndex(evaluate.timesteps_combo.findData("all"))
    evaluate.evaluate()
    wait_until(app, lambda: evaluate.runner is None, timeout_s=3600)
    settle(app, 1.0)
    window.grab().save(str(out_dir / "likelihood.png"))

    panel = evaluate.rate_distortion  # the same pass, read as Fig. 5, the receiver's view after 900 steps
    evaluate.plot_tabs.setCurrentWidget(panel)
    panel.set_step(900)
    wait_until(app, lambda: evaluate.receiver is not None and evaluate.receiver.steps == 900
               and not evaluate.view_jobs.is_running(), timeout_s=120)
    settle(app, 1.0)
    window.grab().save(str(out_dir / "rate_distortion_window.png"))


def shoot_classes(app, window, scratch: Path, out_dir: Path) -> None:
    from ddpm_studio.core.data.demo import create_demo_dataset
    from ddpm_studio.gui.widgets.sampling_panel import GUIDANCE_STEPS_PER_UNIT

    data = scratch / "labelled-shapes"
    create_demo_dataset(data, count=300, seed=3, by_shape=True)
    scan_and_shoot(app, window, data, out_dir / "dataset_classes.png")

    generate = window.generate_page
    window.tabs.setCurrentWidget(generate)
    generate.select_model(Path(__file__).resolve().parents[1] / "models" / "shapes")
    sampling = generate.sampling
    sampling.class_box.setCurrentIndex(sampling.class_box.count() - 1)  # All classes
    sampling.guidance_slider.setValue(3 * GUIDANCE_STEPS_PER_UNIT)
    generate.sampler_box.setCurrentIndex(generate.sampler_box.findData("ddim"))
    generate.steps_spin.setValue(50)
    generate.count_spin.setValue(6)
    generate.seed_spin.setValue(1)
    generate.generate()
    wait_until(app, lambda: generate.runner is None)
    generate.grid.setCurrentRow(7)
    generate.grid.imageActivated.emit(7)
    generate.timeline.set_frame(int(generate.timeline.frame_count() * 0.8))
    settle(app)
    window.grab().save(str(out_dir / "generate_classes.png"))


if __name__ == "__main__":
    sys.exit(main())
