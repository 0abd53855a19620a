"""`python -m graphspec.cli ARGS`: what launched ranks and study stages run (as `graphspec ARGS`)."""

from graphspec.cli import entry

entry()
