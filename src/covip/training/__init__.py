"""Stage 8: GSPO post-training of a VLM policy with TRL (SPEC section 4).

Modules, one concern each: `settings` (config section `training`, presets, launcher), `records`
(train split -> TRL multimodal records), `rewards` (plain reward functions and their TRL wrappers),
`trainer` (GRPOTrainer set-up, Parquet log, resume, merge). Command line: `covip train` (module `job`).
"""
