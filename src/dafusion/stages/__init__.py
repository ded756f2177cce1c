"""The method's stages, in the workflow's order: loading Stable Diffusion (`models`, or the
random-weight `tiny`), textual inversion (`inversion`, `tokens`), erasure (`erasure`,
`deltas`), SDEdit generation (`generation`, `synthetic`) and the classifier (`mixing`,
`backbones`, `classifier`)."""
