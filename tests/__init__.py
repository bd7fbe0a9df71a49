"""The clustermesh test suite (a package, so modules import shared code as `tests.helpers`)."""
