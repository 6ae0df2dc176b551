"""Ray Tune sweeps whose trials are training runs (`hybrid tune`, docs/tune.md): `sweep.run_sweep`."""
