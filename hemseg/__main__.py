"""``python -m hemseg`` = the ``hemseg`` command (useful where console scripts are not installed)."""

from hemseg.cli import entry

entry()
