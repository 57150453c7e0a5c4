"""The capture cache: a model analysed once is served from data, keyed by everything that
can change its inventory, and a damaged cache file only costs a fresh capture."""
import json
import sys

import pytest

from dooly import analyze as analyze_mod
from dooly import cache
from dooly.inventory import Inventory
from dooly.symbolic.labels import DimLabel, Label
from dooly.unit import TensorSig, Unit

T = DimLabel("T", Label.REQUEST)
CONFIG = "fixtures/configs/HuggingFaceTB__SmolLM2-135M-Instruct.json"


def _inventory(width: int = 576) -> Inventory:
    x = TensorSig((T, DimLabel(width, Label.CONFIG)), "bfloat16")
    w = TensorSig((DimLabel(4 * width, Label.CONFIG), DimLabel(width, Label.CONFIG)), "bfloat16")
    y = TensorSig((T, DimLabel(4 * width, Label.CONFIG)), "bfloat16")
    inv = Inventory("m", "cfg.json", "LlamaForCausalLM", "vllm", "abc123", notes=["a note"], tp=2)
    inv.add(Unit("aten.linear.default", inputs=(x, w), outputs=(y,), attrs=(("role", "up"),)), 30, "layer0:linear")
    return inv


def test_inventory_round_trips_through_json():
    inv = _inventory()
    back = Inventory.from_json(json.loads(json.dumps(inv.to_json())))
    assert back.counts() == inv.counts() and back.tp == 2 and back.notes == ["a note"]
    assert [e.where for e in back.entries.values()] == [{"layer0:linear"}]


def test_a_stored_unit_whose_key_disagrees_is_refused():
    obj = _inventory().to_json()
    obj["units"][0]["key"] = "linear-000000000000"
    with pytest.raises(ValueError, match="stored key"):
        Inventory.from_json(obj)


def test_cache_hit_returns_what_was_saved_and_damage_is_a_miss(tmp_path):
    key = cache.capture_key("abc123", "vllm", tp=2)
    cache.save(key, _inventory(), tmp_path)
    assert cache.load(key, tmp_path).counts() == _inventory().counts()
    (tmp_path / f"{key}.json").write_text("{not json")
    assert cache.load(key, tmp_path) is None
    cache.save(key, _inventory(), tmp_path)
    assert cache.load("another-key", tmp_path) is None


def test_key_changes_with_everything_that_changes_the_inventory(monkeypatch):
    base = cache.capture_key("abc", "vllm")
    assert len({base, cache.capture_key("abd", "vllm"), cache.capture_key("abc", "transformers"),
                cache.capture_key("abc", "vllm", tp=2), cache.capture_key("abc", "vllm", fields=False)}) == 5
    monkeypatch.setattr(cache, "installed_version", lambda engine: "9.9.9")
    assert cache.capture_key("abc", "vllm") != base
    monkeypatch.setattr(cache, "__version__", "0.0.0-other")
    assert cache.capture_key("abc", "vllm") != base


def test_analyze_captures_once_then_serves_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []

    def fake_capture(cfg, engine, registry, fields, tp):
        calls.append(cfg.path)
        return _inventory()
    monkeypatch.setattr(analyze_mod, "analyze_config", fake_capture)
    first = analyze_mod.analyze([CONFIG], "transformers")
    second = analyze_mod.analyze([CONFIG], "transformers")
    assert len(calls) == 1
    assert second.inventories[0].counts() == first.inventories[0].counts()
    assert second.inventories[0].config_path == CONFIG   # the path given now, not the cached one
    analyze_mod.analyze([CONFIG], "transformers", use_cache=False)
    assert len(calls) == 2


def test_a_cache_hit_never_imports_torch(tmp_path):
    """Previewing a model seen before costs the interpreter, not the engine."""
    import subprocess
    code = ("import sys, json; from dooly import analyze, cache; "
            "from tests.test_capture_cache import _inventory; "
            f"cfg = analyze.load_config({CONFIG!r}); "
            "cache.save(cache.capture_key(cfg.hash, 'transformers'), _inventory()); "
            f"a = analyze.analyze([{CONFIG!r}], 'transformers'); analyze.reuse_summary(a); "
            "print(json.dumps('torch' in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"XDG_CACHE_HOME": str(tmp_path), "PATH": "/usr/bin:/bin",
                              "PYTHONPATH": "."})
    assert json.loads(out.stdout.strip().splitlines()[-1]) is False


def test_a_db_carries_its_captures_to_a_host_that_never_captured(tmp_path, monkeypatch):
    """`record_analysis` (sweep, analyze --db) stores each capture in the DB; with an empty
    user cache (another host) the DB's copy is served, and a damaged row is only a miss."""
    from dooly.db import Store
    from dooly.profile.plan import record_analysis
    calls = []

    def fake_capture(cfg, engine, registry, fields, tp):
        calls.append(cfg.path)
        inv = _inventory()
        inv.config_hash, inv.engine, inv.tp = cfg.hash, engine, 1
        return inv
    monkeypatch.setattr(analyze_mod, "analyze_config", fake_capture)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "here"))
    db = str(tmp_path / "carried.db")
    with Store.open(db) as store:
        record_analysis(store, analyze_mod.analyze([CONFIG], "transformers"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "elsewhere"))
    with Store.open(db, create=False) as store:
        served = analyze_mod.analyze([CONFIG], "transformers", store=store)
    assert len(calls) == 1 and served.inventories[0].counts() == _inventory().counts()
    assert cache.load(cache.capture_key(served.inventories[0].config_hash, "transformers")) is not None
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "third"))
    with Store.open(db) as store:
        store.put_capture(cache.capture_key(served.inventories[0].config_hash, "transformers"),
                          "h", "transformers", "{not json")
        analyze_mod.analyze([CONFIG], "transformers", store=store)
    assert len(calls) == 2
