"""File > Clear dataset cache: says what it will remove, asks, removes it, and says so."""

from PySide6.QtWidgets import QMessageBox

from ddpm_studio.core.data.cache import list_cache_entries, open_cached_dataset


def test_clear_dataset_cache_asks_then_removes_every_entry(window, demo_folder, cache_folder, monkeypatch):
    list(open_cached_dataset([demo_folder], 16))
    list(open_cached_dataset([demo_folder], 8))
    assert len(list_cache_entries()) == 2
    questions = []

    def answer(parent, title, text, *args, **kwargs):
        questions.append(text)
        return QMessageBox.StandardButton.No if len(questions) == 1 else QMessageBox.StandardButton.Yes

    monkeypatch.setattr(QMessageBox, "question", answer)
    window.clear_cache_action.trigger()  # answered No: nothing is removed
    assert "Remove 2 decoded datasets" in questions[0] and str(cache_folder) in questions[0]
    assert len(list_cache_entries()) == 2
    window.clear_cache_action.trigger()
    assert list_cache_entries() == []
    assert "Cleared the dataset cache: 2 datasets" in window.statusBar().currentMessage()

    told = []
    monkeypatch.setattr(QMessageBox, "information", lambda parent, title, text, *a, **k: told.append(text))
    window.clear_cache_action.trigger()
    assert len(questions) == 2 and "empty" in told[0]
    assert window.clear_cache_action in window.menuBar().actions()[0].menu().actions()
