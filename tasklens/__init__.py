"""tasklens: find, test and compare the MLP neurons a language model uses for a task."""

__version__ = "0.1.0"
