"""Per-batch accuracy against real vLLM (CPU), leave one model out: each model's whole engine
steps predicted by its units plus the engine-step model fitted on the OTHER models'
calibration steps only, against the real `LLMEngine.step`.

    python bench/accuracy_batch.py --db NEW.db --json out/acc.json       # builds what it needs
        [--models smollm2,qwen0.5b,qwen3-0.6b,llama3.2-1b[,mixtral-2l,deepseek-2l]] [--quick] [--real-runs 2]
        [--repeats 3] [--real-from out/acc.raw.json] [--resume] [--breakdown]
    python bench/accuracy_batch.py --models gemma3-1b --pool smollm2,qwen0.5b,qwen3-0.6b,llama3.2-1b ...

Given an empty --db it sweeps every model (`LIMITS`: --max-tokens 1024 --max-batch 64
--max-context 2048; --quick 512/32/1024; the real batches stay inside them), stores the unit fits
(`dooly fit`) and calibrates every model (`dooly calibrate`, its default three passes); a
model's own calibration steps are never used to score it. --pool names the calibrated models
instead (swept and calibrated only); a scored model outside it is never calibrated, so it is
predicted as a model no one has run: its units and the pool's engine-step model. The real
side runs --real-runs times (each a fresh engine in a child process,
dooly.engines.vllm_probe); the difference between two real runs of the same batches is
printed beside each sim-vs-real error (this machine's noise floor).
Within a run each batch is run --repeats times (the whole list, then again) and scored by its median.
Raw real runs are written to --raw (default: beside --json) as each one ends; --resume
reuses the complete ones found there, --real-from replays them without starting vLLM.
Sets (`items`): prefill, decode, mixed. Every real step also records the CPU share of its
threads and its preemptions (another process holding a core slows every OpenMP region by
whole time slices): the median share is printed per model.
--json: flat `mape_{prefill,decode,mixed}_pct` (the worst model), `noise_*_pct`, and
`<model>.*` per model; in-sample figures (per-model calibration) only under `in_sample.`.
--breakdown: one more real run timing every compiled piece and attention call inside the
worker, compared part by part with the units (dooly.engines.vllm_layers).
--families [MODELS]: each model (or those named) also scored family-served: a copy of --db
without the units only it runs, swept with `dooly sweep --families --tolerance T
[--step-tolerance S]` (its check points timed for real, families trained on the other
models only), printed beside its fully swept figures per set (`families.<model>.*` in the
JSON), and beside its twin: the same DB with the family-served units then swept in full,
minutes later, so that the two differ in those units only (`families_twin.<model>.*`).
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import flatjson  # noqa: E402
from dooly.cli import OneLineParser  # noqa: E402
CONFIGS = ROOT / "fixtures" / "configs"
MODELS = {"smollm2": CONFIGS / "HuggingFaceTB__SmolLM2-135M-Instruct.json",
          "qwen0.5b": CONFIGS / "Qwen__Qwen2.5-0.5B.json",
          "qwen3-0.6b": CONFIGS / "Qwen__Qwen3-0.6B.json",
          "llama3.2-1b": CONFIGS / "meta-llama__Llama-3.2-1B-Instruct.json",
          # an architecture none of the four above has (5 of 6 layers sliding-window, head size
          # 256 with one KV head, a 262k vocabulary): the held-out check with --pool
          "gemma3-1b": CONFIGS / "google__gemma-3-1b-it.json",
          # the same held-out check at 2.6B: soft-capped attention and logits, a 256k vocabulary
          "gemma2-2b": CONFIGS / "google__gemma-2-2b.json",
          # the held-out check in size: Llama-3.2-1B's architecture at 3.2B (hidden 3072, 28
          # layers, 24 query / 8 KV heads), larger than every model of the pool
          "llama3.2-3b": CONFIGS / "meta-llama__Llama-3.2-3B.json",
          # a mixture of experts: Mixtral's real expert shapes in 2 layers (fixtures/configs/SOURCES.md)
          "mixtral-2l": CONFIGS / "mistralai__Mixtral-8x7B-Instruct-v0.1-2L.json",
          "deepseek-2l": CONFIGS / "deepseek-ai__DeepSeek-V2-Lite-Chat-2L.json"}
DEFAULT_MODELS = ("smollm2", "qwen0.5b", "qwen3-0.6b", "llama3.2-1b")
# sweep limits (tokens, batch, context): the real batches stay inside them. Sized for a
# 2-core CPU host whose bf16 GEMMs cost ~15 ms per token for SmolLM2-135M and ~140 ms for
# Llama-3.2-1B (no AVX-512): a full run prefills ~16k tokens per model and repeat.
LIMITS = {"full": (1024, 64, 2048), "quick": (512, 32, 1024)}
SETS = ("prefill", "decode", "mixed")
POOL_HELP = ("comma-separated: the models whose calibrations every scored model is predicted from "
             "(swept and calibrated, neither run for real nor scored); default: --models, each left "
             "out of its own pool. A scored model outside --pool is swept only, never calibrated")
BUDGET, MAX_SEQS = 8192, 128   # the real engine's serving settings (as `dooly calibrate`'s defaults)


def items(quick: bool) -> list[dict]:
    """The real batches: prefill (1-4 prompts of 32-1024 tokens), decode (1-64 sequences at
    context 32-1024), mixed (decodes running while a long prompt is chunk-prefilled under a
    small token budget). A decode set's prompts are prefilled first (those steps are not
    scored), so B x context is kept to 2048 tokens."""
    from dooly.engines.vllm_probe import item
    pre = [("1x32", [32]), ("1x128", [128]), ("1x512", [512]), ("2x256", [256] * 2), ("4x128", [128] * 4),
           ("1x1024", [1024])]
    dec = [("1@128", [128], 8), ("8@256", [256] * 8, 6), ("32@64", [64] * 32, 5),
           ("64@32", [32] * 64, 4), ("2@1024", [1024] * 2, 6)]
    mix = [("4dec@256+1024/256", [256] * 4, 20, 1024, 256), ("16dec@64+1024/384", [64] * 16, 10, 1024, 384)]
    if quick:   # inside the quick sweep's limits
        pre, dec, mix = pre[:4], dec[:3], [("4dec@256+768/256", [256] * 4, 12, 768, 256)]
    out = [item("prefill", lbl, lens, 1) for lbl, lens in pre]
    out += [item("decode", lbl, lens, mt) for lbl, lens, mt in dec]
    out += [item("mixed", lbl, d + [long], [mt] * len(d) + [1], budget=b) for lbl, d, mt, long, b in mix]
    return out


def keep(set_name: str, batch) -> bool:
    """The steps a set scores: prefill steps hold prompts only, decode steps one new token
    per sequence, mixed steps both a chunk and decodes."""
    if set_name == "prefill":
        return all(q > 1 and c == 0 for q, c in batch)
    if set_name == "decode":
        return all(q == 1 for q, _ in batch)
    return any(q > 1 for q, _ in batch) and any(q == 1 for q, _ in batch)


def mape(pairs) -> float | None:
    """pairs: (predicted, real)."""
    pairs = list(pairs)
    return 100.0 * statistics.fmean(abs(p - r) / r for p, r in pairs) if pairs else None


# -- the DB: units swept, fits stored, every model calibrated -------------------------------
_SCORED_ENV: dict = {}   # threads -> the DB's environment a replay on another host scores


def bench_env(threads: int | None = None):
    """The environment the bench scores: this host's, or for a replay (--real-from) made on
    another host, the DB's, where the saved runs were made (`use_db_env`)."""
    from dooly.engines import environment
    return _SCORED_ENV.get(threads) or environment("vllm", "cpu", threads=threads)


def bad_input(msg: str):
    """One line on stderr naming the file and the field, exit code 2."""
    print(msg, file=sys.stderr)
    raise SystemExit(2)


def use_db_env(db: str, threads: int | None = None) -> None:
    """--real-from: score the vLLM CPU environment the DB holds when this host's is not in
    it (runs saved on one host, replayed on another: sweeping this host into the DB would
    score them against units and calibrations they never saw); exit naming the DB when it
    holds none or several with these threads."""
    from dooly.db import Store
    from dooly.engines import environment
    here = environment("vllm", "cpu", threads=threads)
    if not Path(db).is_file():
        bad_input(f"{db}: --real-from replays against the DB its runs were scored with; no such file")
    with Store.open(db, create=False) as store:
        envs = store.find_environment(engine="vllm", device_kind="cpu", threads=here.threads,
                                      execution=here.execution, dtype=here.dtype, cache=here.cache)
    if any(e.key == here.key for e in envs):
        return
    if len(envs) != 1:
        bad_input(f"{db}: environments: --real-from needs the one its runs were made in; this host's "
                         f"({here.key}) is not there and {len(envs)} vLLM CPU environments with "
                         f"{here.threads} threads are")
    _SCORED_ENV[threads] = envs[0]
    print(f"replaying on another host: scoring the DB's environment {envs[0].key} ({envs[0].device_name})", flush=True)


def prepare_db(names: list[str], db: str, limits: tuple[int, int, int], log=print, replay: bool = False,
               pool: list[str] | None = None) -> None:
    """Sweep, fit and calibrate what the DB lacks (each step resumable: a rerun measures
    only what is missing). Calibration runs for every model of `pool` (default: every model,
    as the protocol leaves a model's own steps out when scoring it); a model outside `pool`
    is swept only. `replay` (--real-from): nothing is measured; the DB must hold every pool
    model's calibration already."""
    from dooly.cli import main as dooly
    from dooly.config import load_config
    from dooly.db import Store
    from dooly.profile.calibrate import calibrated_models
    cfgs = [str(MODELS[n]) for n in dict.fromkeys(names + (pool or []))]
    if replay:
        use_db_env(db)
    tok, batch, ctx = limits
    for c in [] if replay else cfgs:
        t0 = time.perf_counter()
        rc = dooly(["sweep", c, "--db", db, "--engine", "vllm", "--max-tokens", str(tok), "--max-batch",
                    str(batch), "--max-context", str(ctx), "--no-progress"])
        if rc != 0:
            raise SystemExit(f"sweep of {c} failed (rc {rc})")
        log(f"  swept {Path(c).stem} in {time.perf_counter() - t0:.0f} s")
    if dooly(["fit", "--db", db]) != 0:
        raise SystemExit("dooly fit failed")
    env = bench_env()
    with Store.open(db) as store:
        done = calibrated_models(store, env.key)
    calibrate = cfgs if pool is None else [str(MODELS[n]) for n in pool]
    todo = [c for c in calibrate if load_config(c).hash not in done]
    if todo and replay:
        bad_input(f"{db}: calibrations: --real-from needs every pool model calibrated; "
                         f"{', '.join(Path(c).stem for c in todo)} are not")
    if todo and dooly(["calibrate", *todo, "--db", db]) != 0:
        raise SystemExit("dooly calibrate failed")


def pool_names(value: str | None, error) -> list[str] | None:
    """--pool: the calibrated models (None: every scored model, each left out of its own pool)."""
    if value is None:
        return None
    pool = [m.strip() for m in value.split(",") if m.strip()]
    if not pool or any(n not in MODELS for n in pool):
        error(f"--pool: models from {', '.join(MODELS)}")
    return pool


def model_out_predictor(name: str, db: str, prefer: str = "pool", exclude_self: bool = True):
    """The model's predictor whose engine-step model never saw this model's steps."""
    from dooly.config import load_config
    from dooly.predict import Predictor
    cfg = load_config(MODELS[name])
    return Predictor.load(str(MODELS[name]), db, "vllm", env_key=bench_env().key,
                          step_model=prefer, exclude=[cfg.hash] if exclude_self else [])


_DRIFTS: dict = {}


def recheck(pred, db: str, key: str, enabled: bool, config: str, known=None) -> dict:
    """--recheck-host: scale `pred` by the host's drift since the sweep (its model's stored
    points re-timed now, dooly.profile.drift), measured once per `key` the way a user gets
    it, by `dooly predict --recheck-host` in a fresh process (timed inside a bench that has
    just run the engine, the same points read up to 2x slow); the factors as flat keys.
    Meaningful when the real runs it is scored against were just taken. `known`: a Drift
    measured earlier (saved with the real runs a bench replays), used instead."""
    if not enabled:
        return {}
    if known is not None:
        _DRIFTS[key] = known
    if key not in _DRIFTS and _SCORED_ENV:
        print(f"[{key}] no re-timing saved with these runs, made on another host: not scaled", flush=True)
        return {}
    if key not in _DRIFTS:
        _DRIFTS[key] = d = fresh_drift(config, db, pred.tp)
        print(f"[{key}] host drift since the sweep (now / stored, by step tokens): " + (", ".join(
            f"{t}: {f:.3f}" for t, f in zip(d.tokens, d.factors)) if d else "no points to re-time"), flush=True)
    pred.drift = d = _DRIFTS[key]
    return {f"{key}.drift_T{t}": f for t, f in zip(d.tokens, d.factors)} if d else {}


def fresh_drift(config: str, db: str, tp: int = 1):
    """`dooly predict CONFIG --recheck-host` in a new process: the Drift it measured."""
    import subprocess
    import tempfile
    from dooly.profile.drift import Drift
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "p.json"
        proc = subprocess.run([sys.executable, "-m", "dooly.cli", "predict", config, "--db", db, "--engine", "vllm",
                               "--tp", str(tp), "--batch", "decode:1@64", "--recheck-host", "--json", str(out)],
                              capture_output=True, text=True)
        if proc.returncode != 0 or not out.exists():
            raise SystemExit(f"--recheck-host: dooly predict failed: {proc.stderr.strip().splitlines()[-1:]}")
        d = json.loads(out.read_text()).get("drift")
    return Drift.from_json(d) if d else None


def save_raw(path, key: str, value) -> None:
    """Put `value` under `key` in the raw-runs file at `path`, keeping every other key the
    file holds (other models, other jobs, earlier benches' runs); written to a temporary
    file and moved into place, so an interrupted bench never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        data = json.loads(path.read_text()) if path.exists() else {}
    except ValueError:
        data = {}
    data[key] = value
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


# -- the real side -------------------------------------------------------------------------
def real_runs(names, its, args, log=print) -> dict:
    """{model: [run, ...]}, each run {"steps", "threads", "worker", "started"}; written to
    args.raw after each run."""
    from dooly.engines.vllm_probe import run_child
    if args.real_from:
        saved = json.loads(Path(args.real_from).read_text())
        missing = [n for n in names if n not in saved or not saved[n].get("runs")]
        if missing:
            raise SystemExit(f"--real-from {args.real_from}: no runs for {', '.join(missing)}")
        for n in names:   # scored on the steps the runs hold, whatever batches made them
            if saved[n]["items"] != its:
                log(f"[{n}] the saved runs used other batches than this version's: scored on theirs")
            saved_drift(n, saved[n], args)
        return {n: saved[n]["runs"] for n in names}
    raw_path = Path(args.raw)
    saved = json.loads(raw_path.read_text()) if args.resume and raw_path.exists() else {}
    out = {}
    for n in names:
        entry = saved[n] = saved[n] if saved.get(n, {}).get("items") == its else {"items": its, "runs": []}
        runs = entry["runs"]
        bracket_drift(entry, n, args, lambda: save_raw(raw_path, n, entry), before=len(runs) < args.real_runs)
        while len(runs) < args.real_runs:
            t0 = time.perf_counter()
            res = run_child({"mode": "steps", "config": str(MODELS[n]), "budget": BUDGET,
                             "max_num_seqs": MAX_SEQS, "items": its, "repeats": args.repeats})
            runs.append(dict(res, started=time.strftime("%H:%M:%S")))
            save_raw(raw_path, n, entry)
            log(f"[{n}] real run {len(runs)}: {len(res['steps'])} steps in {time.perf_counter() - t0:.0f} s")
        bracket_drift(entry, n, args, lambda: save_raw(raw_path, n, entry))
        saved_drift(n, entry, args)
        out[n] = runs   # every complete saved run: more runs, a firmer noise floor
    return out


def bracket_drift(entry: dict, name: str, args, save, before: bool = False, tp: int = 1) -> None:
    """--recheck-host: re-time the model's anchor points (its TP=`tp` shards) right before
    its real runs (`drift_before`, only when runs are still to come) or right after them
    (`drift`), once each, and save it with the runs: the host moves by the minute, so a
    re-timing taken after every model's runs, or at one end of the window only, can miss
    the state the runs saw."""
    field = "drift_before" if before else "drift"
    if args.recheck_host and field not in entry and (not before or "drift" not in entry):
        d = fresh_drift(str(MODELS[name]), args.db, tp)
        entry[field] = d.to_json() if d else None
        save()


def saved_drift(name: str, saved: dict, args, key: str | None = None) -> None:
    """--recheck-host: the drift saved with the model's real runs is the one its predictions
    (under `key`, default `name`) are scaled by: re-timed after them, and joined with the
    one before them where a run saved it (older runs saved only the one after)."""
    from dooly.profile.drift import Drift, bracket, disagreement
    if not (args.recheck_host and saved.get("drift")):
        if args.recheck_host and args.real_from:
            print(f"[{key or name}] no re-timing saved with these runs: the host is re-timed now", flush=True)
        return
    after = Drift.from_json(saved["drift"])
    before = Drift.from_json(saved["drift_before"]) if saved.get("drift_before") else None
    moved = disagreement(before, after) if before is not None else 1.0
    if moved > 1.25:
        print(f"[{name}] the host moved during the real runs: re-timings before and after them differ up "
              f"to {moved:.2f}x; scaled by their geometric mean", flush=True)
    _DRIFTS[key or name] = bracket(before, after)


def step_key(s) -> str:
    return json.dumps([s["set"][:2], s["batch"]])


def representative(steps) -> list[dict]:
    """One step per distinct (item, batch) of one run: the median one of its repeats (the
    faster middle one of an even count), so a burst from another tenant that slowed one
    repeat is not scored as the engine's time, and every field comes from one real step."""
    groups: dict[str, list[dict]] = {}
    for s in steps:
        groups.setdefault(step_key(s), []).append(s)
    return [sorted(g, key=lambda s: s["ms"])[(len(g) - 1) // 2] for g in groups.values()]


def by_key(steps) -> dict[str, float]:
    """Wall time of each distinct (item, batch) of one run, the median of its repeats."""
    return {step_key(s): s["ms"] for s in representative(steps)}


def noise_pct(run_a, run_b, set_name) -> float | None:
    """Real vs real: the mean relative difference of the same batches in two runs."""
    a = {k: v for k, v in by_key(run_a["steps"]).items() if json.loads(k)[0][0] == set_name}
    b = by_key(run_b["steps"])
    pairs = [(a[k], b[k]) for k in a if k in b]
    return 100.0 * statistics.fmean(abs(x - y) / ((x + y) / 2) for x, y in pairs) if pairs else None


# -- scoring -------------------------------------------------------------------------------
def cpu_share(runs) -> float | None:
    """Median share of its threads' time a real step ran on a CPU (1: nothing else ran)."""
    shares = [s["cpu_ms"] / (s["ms"] * max(r.get("threads") or [1])) for r in runs for s in r["steps"]
              if s.get("cpu_ms") is not None and s["ms"] > 0]
    return statistics.median(shares) if shares else None


def score(name, runs, pred) -> dict:
    """Per set: whole-step MAPE (units + engine) over every run's batches (each the median
    of its repeats in that run), the units alone against the model's execution, and the
    real-vs-real noise."""
    from dooly.fit.step_pool import quiet_steps
    fig: dict = {}
    steps = [s for r in runs for s in representative(r["steps"]) if keep(s["set"][0], s["batch"])]
    quiet = {id(s) for r in runs for s in quiet_steps(r["steps"], max(r.get("threads") or [1]))}
    cache = {}
    for s in steps:
        k = json.dumps(s["batch"])
        if k not in cache:
            cache[k] = pred.predict(s["batch"])
        s["pred"] = cache[k]
    fig["cpu_share_median"] = cpu_share(runs)
    for set_name in SETS:
        rows = [s for s in steps if s["set"][0] == set_name]
        if not rows:
            continue
        fig[f"mape_{set_name}_pct"] = mape((s["pred"].step_ms, s["ms"]) for s in rows)
        fig[f"units_vs_forward_{set_name}_pct"] = mape((s["pred"].units_ms, s["forward_ms"]) for s in rows)
        fig[f"bias_{set_name}_pct"] = 100 * (statistics.median(s["pred"].step_ms / s["ms"] for s in rows) - 1)
        noise = [noise_pct(a, b, set_name) for i, a in enumerate(runs) for b in runs[i + 1:]]
        noise = [x for x in noise if x is not None]
        fig[f"noise_{set_name}_pct"] = max(noise) if noise else None
        fig[f"n_{set_name}"] = len(rows)
        # the steps no other process slowed: model error without this host's contention
        fig[f"mape_quiet_{set_name}_pct"] = mape((s["pred"].step_ms, s["ms"]) for s in rows if id(s) in quiet)
        fig[f"n_quiet_{set_name}"] = sum(id(s) in quiet for s in rows)
    return fig


def host_state(runs, db: str) -> dict:
    """The host's speed (dooly.hostspeed) while the DB's units were swept, while its
    models were calibrated, and during each real run: a real run on a slower host than
    the sweep's is mis-predicted by that much whatever the model. `host_factor`: the real
    runs' reference time over the sweep's (a diagnostic: a prediction cannot know it)."""
    from dooly.db import Store
    from dooly.hostspeed import Reading, host_factor
    with Store.open(db, create=False) as store:
        rows = store.host_probes(bench_env().key)
    sweep = [Reading(t, g, m) for t, g, m, src in rows if src == "sweep"]
    calib = [Reading(t, g, m) for t, g, m, src in rows if src == "calibrate"]
    real = [Reading(*r) for run in runs for r in run.get("host", [])]
    med = lambda rs, f: statistics.median(getattr(r, f) for r in rs) if rs else None  # noqa: E731
    return {f"host.{name}_{f}": med(rs, f) for name, rs in (("sweep", sweep), ("calibrate", calib),
                                                             ("real", real)) for f in ("gemm_ms", "stream_ms")} \
        | {"host.real_over_sweep": host_factor(real, sweep) if real and sweep else None}


def print_host(fig: dict) -> None:
    part = lambda n: (f"{fig[f'host.{n}_gemm_ms']:.3f} / {fig[f'host.{n}_stream_ms']:.3f}"  # noqa: E731
                      if fig.get(f"host.{n}_gemm_ms") is not None else "-")
    f = fig.get("host.real_over_sweep")
    print(f"  host reference workload (GEMM / stream ms, median): sweep {part('sweep')}, calibration "
          f"{part('calibrate')}, real runs {part('real')}"
          + ("" if f is None else f"; real runs at {f:.3f} x the sweep's reference time"))


def _pct(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def print_model(name, fig, source, labels) -> None:
    share = fig.get("cpu_share_median")
    print(f"[{name}] engine-step model: {source}; real steps ran on a CPU for "
          f"{'-' if share is None else f'{100 * share:.0f}%'} of their threads' time (median)")
    print(f"  {'set':8s} {'n':>4s} {'MAPE %':>8s} {'real-vs-real %':>15s} {'median pred/real':>17s} "
          f"{'units vs forward %':>19s} {'quiet steps: n, MAPE %':>23s}")
    for set_name in SETS:
        if f"mape_{set_name}_pct" not in fig:
            continue
        noise = fig[f"noise_{set_name}_pct"]
        print(f"  {set_name:8s} {fig[f'n_{set_name}']:4d} {fig[f'mape_{set_name}_pct']:8.1f} "
              f"{'-' if noise is None else f'{noise:.1f}':>15s} {1 + fig[f'bias_{set_name}_pct'] / 100:17.2f} "
              f"{fig[f'units_vs_forward_{set_name}_pct']:19.1f} {fig[f'n_quiet_{set_name}']:13d}, "
              f"{_pct(fig[f'mape_quiet_{set_name}_pct']):>7s}")
    for lbl, (real, pred) in labels.items():
        print(f"      {lbl:26s} real {real:8.2f} ms  pred {pred:8.2f} ms  {100 * (pred - real) / real:+6.1f}%")


def per_label(runs, pred) -> dict:
    groups: dict[str, list] = {}
    for r in runs:
        for s in r["steps"]:
            if keep(s["set"][0], s["batch"]):
                groups.setdefault(f"{s['set'][0]} {s['set'][1]}", []).append(s)
    return {k: (statistics.median(s["ms"] for s in v), statistics.median(pred.step_ms(s["batch"]) for s in v))
            for k, v in groups.items()}


# -- per-layer breakdown ---------------------------------------------------------------------
def unit_part(unit) -> str:
    """Which kernels of vLLM's step a unit stands for (dooly.engines.vllm_layers kinds)."""
    op, a = unit.op, unit.attr
    if unit.stateful:
        return "kv" if "kv_cache" in op else "attn"
    if a.get("role") == "lm_head":
        return "logits"
    if op == "sampler":
        return "sampler"
    if op in ("linear", "mm", "addmm", "matmul", "bmm", "baddbmm"):
        return "gemm"
    if "rotary" in op:
        return "rope"
    if "norm" in op or op == "embedding":   # Inductor fuses the embedding into the first norm
        return "norm"
    return "act"


# (label, measured: step fields added / subtracted with "-", units: parts)
_RUNNER = ("update_states_ms", "prepare_inputs_ms", "attn_metadata_ms", "preprocess_ms")
BREAKDOWN = (("GEMM kernels", ("k_gemm_ms",), ("gemm",)),
             ("norm kernels (+ embedding)", ("k_norm_ms",), ("norm",)),
             ("rope kernels", ("k_rope_ms",), ("rope",)),
             ("activation kernels", ("k_act_ms", "k_other_fused_ms"), ("act",)),
             ("attention kernels", ("k_attn_ms",), ("attn",)),
             ("KV-write kernels", ("k_kv_ms",), ("kv",)),
             ("graph, outside the kernels", ("graph_other_ms",), ()),
             ("model forward", ("model_forward_ms",), ("gemm", "norm", "rope", "act", "attn", "kv")),
             ("logits (LM head)", ("logits_ms",), ("logits",)),
             ("sampler", ("sampler_ms",), ("sampler",)),
             ("runner: update states", ("update_states_ms",), ()),
             ("runner: prepare inputs", ("prepare_inputs_ms",), ()),
             ("runner: attention metadata", ("attn_metadata_ms",), ()),
             ("runner: preprocess", ("preprocess_ms",), ()),
             ("runner: rest", ("runner_ms", "-model_forward_ms", "-logits_ms", "-sampler_ms")
              + tuple("-" + f for f in _RUNNER), ()),
             ("engine outside the runner", ("ms", "-runner_ms"), ()),
             ("whole step", ("ms",), ("gemm", "norm", "rope", "act", "attn", "kv", "logits", "sampler")))


QUIET_SHARE = 0.9


def _measured(step: dict, fields) -> float:
    return sum(-step.get(f[1:], 0.0) if f.startswith("-") else step.get(f, 0.0) for f in fields)


def breakdown(name: str, its: list[dict], args) -> dict:
    """One real run with every compiled piece and attention call timed inside the worker;
    per set, the median of each part against the units that stand for it."""
    from dooly.engines.vllm_probe import run_child
    # a replay reads the layer run saved beside the real runs it replays
    raw = Path(args.real_from or args.raw).with_suffix(".layers.json")
    saved = json.loads(raw.read_text()) if raw.exists() and (args.resume or args.real_from) else {}
    if saved.get(name, {}).get("items") != its:
        if args.real_from:
            raise SystemExit(f"--real-from {args.real_from}: no layer run for {name} in {raw}")
        res = run_child({"mode": "steps", "config": str(MODELS[name]), "budget": BUDGET,
                         "max_num_seqs": MAX_SEQS, "items": its, "repeats": args.repeats, "layers": True})
        saved[name] = {"items": its, "run": res}
        save_raw(raw, name, saved[name])
    run = saved[name]["run"]
    threads = max(run.get("threads") or [1])
    steps = [s for s in run["steps"] if keep(s["set"][0], s["batch"])]
    # a step during which another process held a core is slowed by whole time slices in
    # every OpenMP region: that is the host's noise, not the engine's work
    quiet = [s for s in steps if s.get("cpu_ms", 0.0) >= QUIET_SHARE * threads * s["ms"]]
    pred = model_out_predictor(name, args.db)
    out: dict = {f"breakdown.{name}.steps": len(steps), f"breakdown.{name}.quiet_steps": len(quiet)}
    print(f"\n[{name}] per-layer breakdown on the real engine (median per step, ms; units: what the "
          f"sweep's units predict for the same batch); {len(quiet)} of {len(steps)} steps ran with their "
          f"threads on a CPU >= {100 * QUIET_SHARE:.0f}% of the time and are shown"
          + ("" if quiet else " (none did: all steps shown)"))
    steps = quiet or steps
    for set_name in SETS:
        rows = [s for s in steps if s["set"][0] == set_name]
        if not rows:
            continue
        parts = []
        for s in rows:
            p = pred.predict(s["batch"])
            by: dict[str, float] = {}
            for key, ms in p.breakdown.items():
                by[unit_part(pred.units[key])] = by.get(unit_part(pred.units[key]), 0.0) + ms
            parts.append((s, by))
        r0 = rows[0]
        print(f"  {set_name} (n={len(rows)}; per step {r0.get('k_gemm_calls', 0)} GEMM, "
              f"{r0.get('k_attn_calls', 0)} attention, {r0.get('n_pieces', 0)} piece calls)\n"
              f"    {'part':38s} {'measured':>9s} {'units':>9s} {'meas/units':>11s}")
        for label, fields, uparts in BREAKDOWN:
            meas = statistics.median(_measured(s, fields) for s, _ in parts)
            units = statistics.median(sum(by.get(u, 0.0) for u in uparts) for _, by in parts) if uparts else 0.0
            ratio = f"{meas / units:11.2f}" if units > 0 else f"{'-':>11s}"
            print(f"    {label:38s} {meas:9.2f} {units:9.2f} {ratio}")
            key = label.strip().split(" (")[0].replace(" ", "_").replace(":", "").replace("+", "and")
            out[f"breakdown.{name}.{set_name}.{key}.measured_ms"] = meas
            out[f"breakdown.{name}.{set_name}.{key}.units_ms"] = units
        gemm_shapes(name, set_name, parts, pred, out)
    return out


def gemm_shapes(name: str, set_name: str, parts: list, pred, out: dict) -> None:
    """Per GEMM weight (K x N): its kernels' time in the engine against its units' for the
    same batches (the median over steps of each), where the layer run recorded shapes."""
    from dooly.fit.gemm_rows import gemm_shape
    by_kn: dict[tuple[int, int], list[str]] = {}
    for key in pred.units:
        shape = gemm_shape(pred.units[key])
        if shape is not None and isinstance(shape[1], int) and isinstance(shape[2], int):
            by_kn.setdefault(shape[1:], []).append(key)
    predicted = [pred.predict(s["batch"]).breakdown for s, _ in parts]
    rows = []
    for (k, n), keys in sorted(by_kn.items()):
        meas, units = [], []
        for (s, _), per_unit in zip(parts, predicted):
            got = [v for dims, v in (s.get("k_gemm_shapes") or {}).items()
                   if tuple(int(d) for d in dims.split("x")[1:]) == (k, n)]
            if got:
                meas.append(sum(ms for ms, _ in got))
                units.append(sum(per_unit.get(u, 0.0) for u in keys))
        if meas and statistics.median(units) > 0:
            rows.append((k, n, statistics.median(meas), statistics.median(units)))
    if not rows:
        return
    print(f"    GEMM kernels by weight (K x N, MiB bf16): measured / units ms per step")
    for k, n, meas, units in rows:
        print(f"      {k:6d} x {n:6d} ({2 * k * n / 2**20:6.1f}) {meas:9.2f} {units:9.2f} {meas / units:11.2f}")
        out[f"breakdown.{name}.{set_name}.gemm_{k}x{n}.measured_ms"] = meas
        out[f"breakdown.{name}.{set_name}.gemm_{k}x{n}.units_ms"] = units


# -- family-served side by side (--families) ---------------------------------------------------
def family_db(name: str, names: list[str], db: str, limits, tolerance: float, log=print,
              step_tolerance: float | None = None) -> str:
    """A DB where `name` is family-served: a copy of the fully swept `db` without the
    measurements of the units only `name` runs, then `dooly sweep --families` of `name`
    (its check points measured for real; a unit whose check fails is swept in full) and
    `dooly fit`. Families are trained only on the other models' units. Resumable."""
    from dooly.config import load_config
    from dooly.db import Store
    out = str(Path(db).with_suffix(f".families-{name}.db"))
    env = bench_env().key
    if not Path(out).exists():
        with Store.open(out) as fam:
            fam.merge_from(db)
            mine = set(fam.inventory(load_config(MODELS[name]).hash, "vllm"))
            for other in names:
                if other != name:
                    mine -= set(fam.inventory(load_config(MODELS[other]).hash, "vllm"))
            for key in mine:  # only this model runs them: measured anew, from check points
                fam.replace_measurements(key, env, [])
        log(f"  [{name}] {len(mine)} units of its own left to its families")
    _sweep_and_fit(name, out, limits, "family", "--families", "--tolerance", str(tolerance),
                   *([] if step_tolerance is None else ["--step-tolerance", str(step_tolerance)]))
    return out


def _sweep_and_fit(name: str, db: str, limits, what: str, *flags: str) -> None:
    """`dooly sweep` of `name` into `db` at the bench's limits (with `flags`), then `dooly fit`."""
    from dooly.cli import main as dooly
    tok, batch, ctx = limits
    rc = dooly(["sweep", str(MODELS[name]), "--db", db, "--engine", "vllm", "--max-tokens", str(tok),
                "--max-batch", str(batch), "--max-context", str(ctx), "--no-progress", *flags])
    if rc != 0 or dooly(["fit", "--db", db]) != 0:
        raise SystemExit(f"{what} sweep or fit of {name} failed (rc {rc})")


def twin_db(name: str, fdb: str, limits) -> str:
    """`fdb` with its family-served units swept in full (`dooly sweep` without --families
    measures the rest of their grids; a unit measured beyond its check points is no longer
    served): the fully swept twin of the family-served model, timed minutes apart rather
    than hours. Resumable."""
    from dooly.db import Store
    out = str(Path(fdb).with_suffix(".twin.db"))
    if not Path(out).exists():
        with Store.open(out) as twin:
            twin.merge_from(fdb)
    _sweep_and_fit(name, out, limits, "twin")
    return out


def print_side_by_side(name: str, full: dict, fam: dict, pred, twin: dict) -> None:
    served = {k: m.cv_mape_pct for k, m in pred.models.items() if pred.fallback.get(k) == "family"}
    steps = [m.verdict.step_error_pct for k, m in pred.models.items() if k in served
             and m.verdict.step_error_pct is not None and m.verdict.error_pct > m.verdict.tolerance_pct]
    worst = (f", largest check error {max(served.values()):.1f}%" if served else "") + (
        f" ({len(steps)} served by the step tolerance, at most {max(steps):.2f}% of the step)" if steps else "")
    print(f"[{name}] family-served vs fully swept: {len(served)} of {len(pred.counts)} units family-served{worst}")
    print(f"  {'set':8s} {'fully swept MAPE %':>19s} {'family-served MAPE %':>21s} {'twin MAPE %':>12s} "
          f"{'family - twin pp':>17s}")
    for s in SETS:
        a, b, t = full.get(f"mape_{s}_pct"), fam.get(f"mape_{s}_pct"), twin.get(f"mape_{s}_pct")
        if a is not None and b is not None and t is not None:
            print(f"  {s:8s} {a:19.1f} {b:21.1f} {t:12.1f} {b - t:+17.1f}")


def parse(argv=None):
    """The arguments, every one checked before anything runs (ap.error on a bad one): (args, names)."""
    ap = OneLineParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS),
                    help=f"comma-separated, from {', '.join(MODELS)} (mixtral-2l: the MoE check; "
                         "deepseek-2l: latent attention (MLA) with its MoE)")
    ap.add_argument("--db", default=str(ROOT / "out" / "accuracy.db"))
    ap.add_argument("--quick", action="store_true", help="smoke run: small sweep limits, fewer batches")
    ap.add_argument("--real-runs", type=int, default=2, help="real engine runs per model (>= 2: noise floor)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="passes over the batches within one real run, each batch scored by its median "
                         "(default 3; 1 with --quick)")
    ap.add_argument("--real-from", help="replay the real runs saved in this raw file (no vLLM run)")
    ap.add_argument("--raw", help="where real runs are saved (default: beside --json)")
    ap.add_argument("--resume", action="store_true", help="reuse complete real runs found in --raw (all of them, at least --real-runs)")
    ap.add_argument("--recheck-host", action="store_true",
                    help="re-time a few of each model's stored points now and scale its predictions by the "
                         "host's drift since the sweep (dooly.profile.drift), measured right after the "
                         "model's real runs and saved with them")
    ap.add_argument("--breakdown", action="store_true", help="per-layer breakdown on the real engine")
    ap.add_argument("--pool", metavar="MODELS", help=POOL_HELP)
    ap.add_argument("--json", dest="json_path")
    ap.add_argument("--families", nargs="?", const="all", default=None, metavar="MODELS",
                    help="also score each model (or these) family-served, trained on the other "
                         "models' units, beside its fully swept figures (a DB per model beside --db)")
    ap.add_argument("--tolerance", type=float, default=3.0, help="check-point tolerance %% (--families)")
    ap.add_argument("--step-tolerance", type=float, default=None,
                    help="--families: also serve units whose share-weighted check errors are within this %%")
    args = ap.parse_args(argv)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown or not names:
        ap.error(f"--models: unknown {unknown}; choose from {', '.join(MODELS)}")
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.real_runs < 1 or args.repeats < 1:
        ap.error("--real-runs and --repeats must be at least 1")
    args.pool = pool_names(args.pool, ap.error)
    args.fam_names = []
    if args.families:
        args.fam_names = names if args.families == "all" else [m.strip() for m in args.families.split(",")]
        if any(n not in names for n in args.fam_names) or not 0 < args.tolerance < 100 or not (
                args.step_tolerance is None or 0 < args.step_tolerance < 100):
            ap.error(f"--families: models from --models ({', '.join(names)}); --tolerance and "
                     "--step-tolerance in (0, 100)")
    args.raw = args.raw or str(Path(args.json_path or ROOT / "out" / "accuracy_batch.json").with_suffix(".raw.json"))
    return args, names


def protocol(pool: list[str] | None) -> str:
    return "leave-one-model-out" if pool is None else "held-out from pool " + ",".join(pool)


def score_all(names, runs, args) -> dict:
    """Each model scored model-out (and in-sample, printed beside it), and the worst per set."""
    result: dict = {"models": names, "protocol": protocol(args.pool), "real_runs": args.real_runs}
    for n in names:
        pred = model_out_predictor(n, args.db)
        pred.set_serving(BUDGET, MAX_SEQS)   # CUDA-graph sizes, on a GPU host
        result.update(recheck(pred, args.db, n, args.recheck_host, str(MODELS[n])))
        fig = score(n, runs[n], pred) | host_state(runs[n], args.db)
        print_model(n, fig, pred.step_model_source, per_label(runs[n], pred))
        print_host(fig)
        result.update({f"{n}.{k}": v for k, v in fig.items()}, **{f"{n}.step_model_source": pred.step_model_source})
        if args.pool is not None and n not in args.pool:
            continue   # never calibrated: no in-sample figure exists
        own = model_out_predictor(n, args.db, prefer="model", exclude_self=False)
        ins = score(n, runs[n], own)
        print(f"  in-sample (this model's own calibration, {own.step_model_source}; not the headline): " +
              ", ".join(f"{s} {ins[f'mape_{s}_pct']:.1f}%" for s in SETS if f"mape_{s}_pct" in ins))
        result.update({f"in_sample.{n}.mape_{s}_pct": ins.get(f"mape_{s}_pct") for s in SETS})
    for key in [f"mape_{s}_pct" for s in SETS] + [f"noise_{s}_pct" for s in SETS]:
        vals = [result.get(f"{n}.{key}") for n in names if result.get(f"{n}.{key}") is not None]
        result[key] = max(vals) if vals else None
    print(f"\n{result['protocol']}, worst model per set: " + ", ".join(
        f"{s} {result[f'mape_{s}_pct']:.1f}% (real-vs-real {result[f'noise_{s}_pct'] or 0:.1f}%)"
        for s in SETS if result[f"mape_{s}_pct"] is not None))
    return result


def score_families(names, runs, args, result: dict) -> None:
    """--families: each model family-served beside its fully swept twin, into `result`."""
    lim = LIMITS["quick" if args.quick else "full"]
    for n in args.fam_names:
        others = list(dict.fromkeys(names + (args.pool or [])))
        fdb = family_db(n, others, args.db, lim, args.tolerance, step_tolerance=args.step_tolerance)
        pred, twin = model_out_predictor(n, fdb), model_out_predictor(n, twin_db(n, fdb, lim))
        pred.set_serving(BUDGET, MAX_SEQS)
        twin.set_serving(BUDGET, MAX_SEQS)
        fig, tfig = score(n, runs[n], pred), score(n, runs[n], twin)
        print_side_by_side(n, {k[len(n) + 1:]: v for k, v in result.items() if k.startswith(f"{n}.")},
                           fig, pred, tfig)
        result.update({f"families.{n}.{k}": v for k, v in fig.items()})
        result.update({f"families_twin.{n}.{k}": v for k, v in tfig.items()})
        result[f"families.{n}.units_family_served"] = sum(v == "family" for v in pred.fallback.values())


def main(argv=None) -> int:
    args, names = parse(argv)
    its = items(args.quick)
    prepare_db(names, args.db, LIMITS["quick" if args.quick else "full"], replay=bool(args.real_from),
               pool=args.pool)
    runs = real_runs(names, its, args)
    result = score_all(names, runs, args)
    if args.families:
        score_families(names, runs, args, result)
    if args.breakdown:
        for n in names:
            result.update(breakdown(n, its, args))
    flatjson.write(args.json_path, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
