"""The window's pages: one module a page, its layout and its reactions to its jobs' events."""
