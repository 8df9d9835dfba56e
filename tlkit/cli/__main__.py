"""`python -m tlkit.cli ...`: the same as the `tlkit` command."""
from tlkit.cli import main

main()
