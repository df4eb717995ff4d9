"""Running core iterators from the window: the worker threads, the job controller, and closing while work runs."""
