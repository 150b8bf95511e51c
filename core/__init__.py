"""Pieces shared by both model families (`ddpm/`, `ebm/`) and the modes: the
training state (`train_state`) and the evaluation's classifier network
(`classifier`).

`ddpm/` and `ebm/` may import `core/`; `core/` imports neither of them nor
`launch/` or `configs/`.
"""
