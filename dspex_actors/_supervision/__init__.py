"""Private layer of dspex_actors."""
