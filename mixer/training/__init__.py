"""Stage 3: mixes -> runs, through a trainer adapter (see `mixer.training.trainer`)."""
