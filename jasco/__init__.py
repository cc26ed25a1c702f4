"""jasco: train, fine-tune, export and run JASCO text-to-music flow matching."""

__version__ = "0.1.0"
