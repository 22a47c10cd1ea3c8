"""One module per ``mlplab`` subcommand (see :mod:`mlplab.cli`)."""
