"""Graph: pure torch.fx passes over a captured graph (`name_pass(gm) -> gm`, results
under `node.meta["dooly"]`): normalise op names, label dims, group fused regions, build
canonical units and a model's inventory; unit families (`family`: a unit's key without
its config dims, pure data). `capture.Captured` is what every engine hands over. May import: torch, networkx, dooly.config, dooly.errors, dooly.unit,
dooly.symbolic; never an engine's model code (that lives in dooly.engines)."""
