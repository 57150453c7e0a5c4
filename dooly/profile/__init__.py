"""Profile: what to measure and how. Request grids (`grid`), the profiling-cost model
(`cost`), the plan against a DB (`plan`), check points and adaptive grids (`checkpoints`),
timing on CPU and CUDA (`timing`), runnable units rebuilt from data (`runners`,
`compiled`; which units they cannot rebuild: `buildable`), the resumable `sweep` (one
unit's points: `sweep_units`) and the engine `calibrate` step; collective units timed
across a real group of processes (`collectives`, `collective_sweep`) and `calibrate_tp`
for tensor-parallel models; a sweep on a Ray cluster (`ray_sweep`: the driver,
`ray_cluster`, `ray_worker`: the actors; the optional ray is imported only there). May
import: dooly.config, dooly.env, dooly.hostspeed, dooly.errors, dooly.unit, dooly.symbolic, dooly.parallel,
dooly.graph (data only), dooly.db, dooly.fit.step_model (the engine steps calibrate
records), dooly.fit.families / checks / family_store (check points), and dooly.engines for the engine's own kernels and
environment; never dooly.analyze (sweep takes inventories)."""
