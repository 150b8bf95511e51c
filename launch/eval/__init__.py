"""Evaluation: `evaluate` (the --mode evaluate protocol and the .npz scorer),
`frechet` (Fréchet distances), `inception` (the FID/IS Inception network)."""
