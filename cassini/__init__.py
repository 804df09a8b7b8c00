"""cassini: the command-line client of saturnd."""
