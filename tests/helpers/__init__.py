"""Plain helpers the tests share (no fixtures: those live in the conftest files); no test module imports
another test module."""
