"""Helpers shared by test files, imported as ``from tests.helpers.<module> import ...``; no test lives here."""
