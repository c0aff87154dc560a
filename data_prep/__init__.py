"""One-way converters from real driving datasets into the drivesim clip format."""
