"""Every use of another project's private internals, one module per project (issue 22).

Each function names, in its docstring, the private thing it relies on; tests/test_adapters.py
checks each of those exists with the parameters used, so an upgrade that moves one fails there
by name rather than somewhere in a study."""
