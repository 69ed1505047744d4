"""bench/lora_concept.py --seed-sets (docs/lora-training.md): several seed sets' scores pooled into one report whose
figures are the sets' means, whose misses are their sums, and which keeps each set's own report."""

from __future__ import annotations

from tests.bench_scripts import load_bench_script


def _report(seed_base: int, scene_seed: int, new: float, old: float, misses: dict[str, int]) -> dict[str, object]:
    return {
        "model": "shapes", "concept": "rectangle", "seed_base": seed_base, "old_scene_seed": scene_seed,
        "concept_with_lora": {"shape": new, "shape_colour": new},
        "old_with_lora": {"shape": old, "shape_colour": old - 0.01},
        "old_misses_with_lora": misses,
    }


def test_pooled_sets_average_the_scores_sum_the_misses_and_keep_each_set() -> None:
    bench = load_bench_script("lora_concept")
    reports = [_report(0, 1_000_003, 0.83, 0.905, {"small star": 13, "small square": 4}),
               _report(100_000, 1_000_003, 0.89, 0.90, {"small star": 14, "large square": 1}),
               _report(200_000, 1_000_020, 0.82, 0.89, {"small circle": 3})]
    pooled = bench.pooled(reports)
    assert pooled["concept_with_lora"] == {"shape": 0.8467, "shape_colour": 0.8467}
    assert pooled["old_with_lora"] == {"shape": 0.8983, "shape_colour": 0.8883}
    assert pooled["old_misses_with_lora"] == {"large square": 1, "small circle": 3, "small square": 4,
                                              "small star": 27}
    assert pooled["seed_base"] == [0, 100_000, 200_000]
    assert pooled["old_scene_seed"] == [1_000_003, 1_000_003, 1_000_020]
    assert pooled["model"] == "shapes" and pooled["seed_sets"] == reports
    assert bench.SEED_SETS == ((0, 1_000_003), (100_000, 1_000_003), (200_000, 1_000_020))  # the docs' three sets
