"""``python -m tasklens``: the command line (also under ``torchrun``)."""

from tasklens.cli import app

app(prog_name="tasklens")
