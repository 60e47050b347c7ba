"""Tasks: plain-data prompts and answers, their tokenisation, and the built-in suite."""

from tasklens.tasks.task import Task

__all__ = ["Task"]
