"""Sample services for the demo and the tests: stand-ins for what sits behind the broker."""
