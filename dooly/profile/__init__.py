"""Profile: what to measure and how. Request grids (`grid`), the profiling-cost model
(`cost`), the plan against a DB (`plan`), timing on CPU and CUDA (`timing`), runnable
units rebuilt from data (`runners`, `compiled`), the resumable `sweep` and the engine
`calibrate` step. May import: dooly.config, dooly.env, dooly.errors, dooly.unit,
dooly.symbolic, dooly.graph (data only), dooly.db, dooly.fit.step_model (the engine
steps calibrate records), and dooly.engines for the engine's own kernels and
environment; never dooly.analyze (sweep takes inventories)."""
