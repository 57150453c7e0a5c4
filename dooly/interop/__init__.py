"""Interop: other simulators' formats. Vidur's file layout (`vidur_format`: op names,
columns, the CSV writer); its measured `mlp.csv` profiles imported as Dooly units and
measurements (`vidur_import`), and a Dooly DB exported as Vidur's profile CSVs
(`vidur_export`, on Vidur's grids, `vidur_grid`, with each Vidur op's unit chosen by
`vidur_ops`; `vidur_network`: the all_reduce network profile of a TP model).
May import: numpy, dooly.config, dooly.env, dooly.errors, dooly.unit, dooly.symbolic,
dooly.db, dooly.fit, dooly.predict."""
