"""``python -m masksearch.cli ...`` = the ``masksearch`` command."""

from masksearch.cli import entry

entry()
