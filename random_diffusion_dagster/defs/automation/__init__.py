"""What starts runs without a person: the sensor on new images, the input files' sensor, the catch-up schedule and
the report's declarative automation."""
