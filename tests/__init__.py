"""The test suite; a package so that tests/brubeckservice can mirror brubeckservice without shadowing it."""
