"""`dooly export vidur`: write Vidur's profiling CSVs (mlp.csv, attention.csv) from a DB."""
from __future__ import annotations

import sys

from dooly.cli.batchspec import MAX_SEQS
from dooly.cli.flags import MAX_TP, TP_HELP, int_range


def register(sub) -> None:
    p = sub.add_parser("export", help="write a DB's predictions in another tool's profiling format")
    esub = p.add_subparsers(dest="export_format", required=True)
    v = esub.add_parser("vidur", help="Vidur's mlp.csv and attention.csv (ms, Vidur's grids and columns)")
    v.add_argument("config", help="the model's HF config.json")
    v.add_argument("--db", required=True, help="latency DB (swept with the vllm engine)")
    v.add_argument("--out", required=True, help="output directory (mlp.csv, attention.csv)")
    v.add_argument("--max-tokens", type=int_range(1), default=None,
                   help="cap of mlp.csv's num_tokens grid (4096, or the model's maximum length if shorter)")
    v.add_argument("--max-model-len", type=int_range(64), default=None,
                   help="attention.csv: longest chunk + kv_cache_size (as --max-tokens)")
    v.add_argument("--max-batch-size", type=int_range(1, MAX_SEQS), default=128,
                   help="attention.csv: largest decode batch (128)")
    v.add_argument("--block-size", type=int_range(1, 1 << 16), default=16,
                   help="block_size column; Vidur keeps rows equal to its scheduler's block size (16)")
    v.add_argument("--engine", default=None, help="environment engine (default: the best-covered one)")
    v.add_argument("--env", default=None, help="environment key")
    v.add_argument("--tp", type=int_range(1, MAX_TP), default=1,
                   help=TP_HELP + "; rows for num_tensor_parallel_workers = N, and all_reduce.csv")
    v.set_defaults(func=run_export_vidur)


def run_export_vidur(args) -> int:
    from dooly.config import load_config
    from dooly.interop.vidur_export import export_vidur
    cfg = load_config(args.config)  # the config and the flags against it before the DB
    if args.tp > 1:
        from dooly.parallel import check_tp
        check_tp(cfg, args.tp)
    for flag in ("max_model_len", "max_tokens"):
        if getattr(args, flag) is None:
            setattr(args, flag, min(4096, cfg.max_length()[0]))
        cfg.check_length("--" + flag.replace("_", "-"), getattr(args, flag))
    res = export_vidur(args.config, args.db, args.out, max_tokens=args.max_tokens,
                       max_model_len=args.max_model_len, engine=args.engine, env=args.env,
                       max_batch_size=args.max_batch_size, block_size=args.block_size, tp=args.tp)
    d = res.dims
    if res.refitted:
        from dooly.predict import refit_note
        print(refit_note(res.refitted, args.db), file=sys.stderr)
    print(f"environment: {res.env_label}")
    print(f"model: n_head={d.n_head} n_kv_head={d.n_kv_head} n_embd={d.n_embd} "
          f"n_expanded_embd={d.n_expanded_embd} vocab_size={d.vocab_size} use_gated_mlp={d.use_gated_mlp}")
    print(f"wrote {res.mlp_path} ({res.mlp_rows} rows)")
    print(f"wrote {res.attention_path} ({res.attention_rows} rows)")
    if res.network_path:
        print(f"wrote {res.network_path} ({res.network_rows} rows; Vidur reads it from "
              "data/profiling/network/<network_device>/all_reduce.csv)")
    elif args.tp > 1:
        print("no all_reduce unit of [T, n_embd]: all_reduce.csv not written", file=sys.stderr)
    print("times in ms; min = max = mean = median = Dooly's prediction, std = 0 (predictions carry no spread)")
    print("mapped:")
    for s in res.sources.values():
        if s.unit_key:
            print(f"  {s.op}: {s.unit_key} ({s.note})")
    zeros = res.zero_ops()
    if zeros:
        print("written as 0:")
        for s in zeros:
            print(f"  {s.op}: {s.note}")
    if res.unexported:
        print("not exported (Vidur has no column for them): " + ", ".join(res.unexported))
    if res.extrapolated:
        print("extrapolated (sweep with larger limits to cover Vidur's grid):")
        for op, n in res.extrapolated.items():
            print(f"  {op}: {n}")
    for op, n in res.clamped.items():
        print(f"non-positive: {op}: the fit gave <= 0 ms on {n} rows (outside its data), written as 0")
    return 0
