"""Pieces shared by both model families (`ddpm/`, `ebm/`): the training state.

`ddpm/` and `ebm/` may import `core/`; `core/` imports neither of them nor
`launch/` or `configs/`.
"""
