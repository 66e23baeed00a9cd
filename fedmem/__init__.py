"""fedmem."""
