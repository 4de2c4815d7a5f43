"""The voice path's Python stages (resampling, ...); per-frame kernels live in antiphon.native."""
