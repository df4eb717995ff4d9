"""The widgets that pages are built from: one widget, or one group of controls, a module."""
