"""napari layer of the plugin: dock widgets, reader, writer and sample data (no science here)."""
