"""Cycle collection in the window: in the GUI thread only, young generations collected, old ones frozen until idle."""

import gc
import weakref

import pytest
from PySide6.QtWidgets import QApplication

from tests.helpers.windows import add_window


class Node:
    def __init__(self):
        self.partner = None


def cycle() -> weakref.ref:
    """A reference cycle that is garbage at once; the weak reference tells whether it was freed."""
    first, second = Node(), Node()
    first.partner, second.partner = second, first
    return weakref.ref(first)


@pytest.fixture
def low_thresholds():
    """Every call of the collector's timer slot then passes every threshold."""
    saved = gc.get_threshold()
    gc.set_threshold(1, 1, 1)
    yield
    gc.set_threshold(*saved)


def test_young_cycles_are_collected_and_the_window_is_frozen_not_walked(window, qtbot, low_thresholds):
    collector = window.garbage_collector
    assert not gc.isenabled()
    young = cycle()
    kept = []
    for _ in range(30):
        kept.append([[] for _ in range(5)])  # objects that live on, as a running window makes them
        collector.collect()  # the timer's slot, called as the timer would (each call passes one more threshold)
    assert young() is None  # a cycle that dies young is freed by the young generations
    tracked = {id(obj) for obj in gc.get_objects()}  # what a collection would walk
    # lists the pages made
    assert id(window.train_page.jobs) not in tracked and id(window.noising_page.jobs) not in tracked
    assert gc.get_freeze_count() > 0


def test_the_deep_collection_frees_old_cycles_when_nothing_runs(window, qtbot):
    collector = window.garbage_collector
    old = cycle()
    gc.freeze()  # as if it had lived into generation 2 and been frozen there
    collector.collect()
    assert old() is not None  # regular collections leave frozen objects alone
    assert collector.is_idle()
    collector.collect_deeply()
    assert old() is None


def test_closing_the_window_gives_collection_back(qtbot, settings, models_dir, user_models_dir):
    from ddpm_studio.gui.main_window import MainWindow
    from ddpm_studio.gui.model_library import ModelLibrary

    was_enabled = gc.isenabled()
    main_window = MainWindow(settings=settings, library=ModelLibrary([models_dir, user_models_dir]))
    add_window(qtbot, main_window)
    main_window.show()
    QApplication.processEvents()
    assert gc.get_freeze_count() > 0 and not gc.isenabled()
    old = cycle()
    gc.freeze()
    main_window.confirm_close = False
    main_window.close()
    assert gc.get_freeze_count() == 0 and old() is None
    assert gc.isenabled() == was_enabled


def test_a_burst_of_young_objects_is_frozen_not_walked_in_the_gui_thread(window):
    """A worker that imports a large module leaves hundreds of thousands of young objects: walking them took
    80 ms of the GUI thread. They live long; the collector freezes them instead."""
    from ddpm_studio.gui.garbage import BURST

    collector = window.garbage_collector
    gc.freeze()
    frozen = gc.get_freeze_count()
    burst = [[index] for index in range(BURST + 1000)]  # alive, as an imported module's objects are
    assert gc.get_count()[0] > BURST
    collector.collect()
    assert gc.get_freeze_count() >= frozen + BURST  # moved out of every collection's walk
    assert gc.get_count()[0] < 100 and len(burst) == BURST + 1000  # the young generation starts again
