from graphspec.cli import entry

entry()
