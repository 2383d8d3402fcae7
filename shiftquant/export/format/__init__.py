"""The bundle file and the values in it: the format, integer types, pixel inputs, run-time values and proof facts."""
