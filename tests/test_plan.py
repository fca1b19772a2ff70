from random_diffusion_dagster.engine.catalog import parse_catalog
from random_diffusion_dagster.engine.plan import Planner, SourceSnapshot, choose

PROMPTS = [f"prompt {i}" for i in range(7)]


def _models(tmp_path, count=4):
    return parse_catalog({"models": [{"name": f"m{i}", "path": f"m{i}"} for i in range(count)]}, base_dir=tmp_path)


def test_same_image_and_seed_give_the_same_choice(tmp_path):
    models = _models(tmp_path)
    assert choose("abc", 0, PROMPTS, models) == choose("abc", 0, PROMPTS, models)


def test_a_new_run_seed_rerolls_and_choices_spread_over_the_lists(tmp_path):
    models = _models(tmp_path)
    hashes = [f"{i:064x}" for i in range(40)]
    seed0 = [choose(h, 0, PROMPTS, models) for h in hashes]
    seed1 = [choose(h, 1, PROMPTS, models) for h in hashes]
    assert sum(a != b for a, b in zip(seed0, seed1, strict=False)) >= 35
    assert {c[0] for c in seed0} == set(PROMPTS)
    assert {c[1].name for c in seed0} == {m.name for m in models}
    assert len({c[2] for c in seed0}) == 40  # every image gets its own diffusion seed


def test_fingerprint_changes_with_prompt_model_seed_and_source(tmp_path):
    models = _models(tmp_path)
    base = Planner(PROMPTS, models, 0, tmp_path).task("k", "/src", SourceSnapshot("aa", 1, 1))
    assert (
        base.fingerprint
        == Planner(PROMPTS, models, 0, tmp_path).task("k", "/src", SourceSnapshot("aa", 1, 1)).fingerprint
    )
    assert (
        base.fingerprint
        != Planner(PROMPTS, models, 0, tmp_path).task("k", "/src", SourceSnapshot("bb", 1, 1)).fingerprint
    )
    assert (
        base.fingerprint
        != Planner(PROMPTS, models, 5, tmp_path).task("k", "/src", SourceSnapshot("aa", 1, 1)).fingerprint
    )
    retuned = parse_catalog(
        {"models": [{"name": f"m{i}", "path": f"m{i}", "strength": 0.5} for i in range(4)]}, base_dir=tmp_path
    )
    assert (
        base.fingerprint
        != Planner(PROMPTS, retuned, 0, tmp_path).task("k", "/src", SourceSnapshot("aa", 1, 1)).fingerprint
    )
    described = parse_catalog(
        {"models": [{"name": f"m{i}", "path": f"m{i}", "description": "new words"} for i in range(4)]},
        base_dir=tmp_path,
    )
    assert (
        base.fingerprint
        == Planner(PROMPTS, described, 0, tmp_path).task("k", "/src", SourceSnapshot("aa", 1, 1)).fingerprint
    )  # no pixel change


def test_an_estimate_reads_as_a_person_would_say_it():
    from random_diffusion_dagster.engine.freshness import Estimate

    assert Estimate(40, 720.0, []).words() == "about 12 min of GPU time for 40 results"
    assert Estimate(3, 4.04, ["sdxl"]).words() == (
        "about 4.0 s of GPU time for 3 results (sdxl not measured yet: counted at the mean)"
    )
    assert Estimate(1, 0.01, []).words() == "under 0.1 s of GPU time for 1 result"  # tiny models on a CPU
    assert Estimate(2, None, []).words() == "2 results; no figure yet: no result has been made to measure"
