"""The real-size benchmark's table and target verdicts (pure helpers; the benchmark itself runs with
`python -m benchmarks.run real_size`)."""
from __future__ import annotations

from benchmarks.bench_real_size import GIB, rows_of, target_rows


def found(rows: list[dict], parts: dict | None = None, parameters: dict | None = None) -> dict:
    return {"label": "SD1.5", "size": 512, "precisions": {"fp32": {
        "rows": rows, "resident": 4 * GIB, "parts": parts or {},
        "parameters": parameters or {"UNet": 859_520_964, "VAE": 83_653_863, "TAESD": 1_222_532}}}}


def row(variant: str, per_unit: float, peak_gib: float, unit: str = "step", batch: int = 1) -> dict:
    return {"variant": variant, "unit": unit, "batch": batch, "per_unit": per_unit, "first": per_unit,
            "peak": int(peak_gib * GIB), "note": "", "wall": per_unit, "evaluations": [per_unit]}


def by_target(rows: list[list]) -> dict[str, list]:
    return {r[1].split(":")[0].split(", batch")[0]: r for r in rows}


def test_ratio_targets_are_against_the_plain_step_of_the_same_run():
    got = by_target(target_rows(found([
        row("plain KSampler", 10.0, 2.0),
        row("Apply h-space Vector", 10.1, 2.0),                       # 1.01x <= 1.02
        row("Dual latent, tau_gc 0.5 (f 0.5)", 14.0, 2.0),            # 1.40x > 1.30
        row("STG, nothing flagged, VAE", 25.0, 3.0),                  # 2.50x > 1.3
        row("STG, nothing flagged, TAESD", 10.5, 2.5),                # 1.05x <= 1.1
    ], parts={"VAE decode": 9.0, "TAESD decode": 0.2, "NudeNet score": 0.3})))
    assert got["Apply h-space Vector"][2:4] == ["1.01x", "met"]
    assert got["Dual latent, tau_gc 0.5 (f 0.5)"][2] == "1.40x"
    assert got["Dual latent, tau_gc 0.5 (f 0.5)"][3] == f"missed by {1.4 - 1.3:.2f}x ({1.4 / 1.3:.2f}x the target)"
    vae = got["STG, nothing flagged, VAE"]
    assert vae[2] == "2.50x" and vae[3].startswith("missed by 1.20x")
    # where it goes: plain + the VAE decode + the score, summed independently
    assert "VAE decode (9.0 s)" in vae[4] and "NudeNet score (0.3 s)" in vae[4] and f"{10 + 9 + 0.3:.1f} s" in vae[4]
    assert got["STG, nothing flagged, TAESD"][2:4] == ["1.05x", "met"]
    assert "TAESD decode (0.2 s)" in got["STG, nothing flagged, TAESD"][4]
    assert "Apply Embedding Direction" not in got  # a variant that did not run has no verdict


def test_peaks_on_a_gpu_add_the_fp16_weights_and_training_is_bounded_linearly_from_its_batch():
    params = {"UNet": 1_000_000_000, "VAE": 100_000_000, "TAESD": 0}
    got = by_target(target_rows(found([
        row("plain KSampler", 10.0, 2.0),
        row("STG, every image flagged, TAESD, checkpointing", 20.0, 3.0),
        row("Train Steering Vector, embedding_direction", 30.0, 0.25, unit="iteration"),
        row("Train Steering Vector, codsma_cvector", 30.0, 2.0, unit="iteration"),
    ], parameters=params)))
    stg = got["STG, every image flagged, TAESD, checkpointing"]
    assert stg[2] == f"{3.0 + 2 * 1.1e9 / GIB:.2f} GiB" and stg[3] == "met"
    ed = got["Train Steering Vector, embedding_direction"]
    assert ed[2] == f"{8 * 0.25 + 2e9 / GIB:.2f} GiB" and ed[3] == "met"       # 3.86 <= 4
    codsma = got["Train Steering Vector, codsma_cvector"]
    assert codsma[2] == f"{8 * 2.0 + 2e9 / GIB:.2f} GiB"                    # 17.9 > 12: only a bound
    assert codsma[3].startswith("not shown")


def test_the_table_gives_each_variant_its_ratio_and_refusals_their_reason():
    data = found([row("plain KSampler", 10.0, 2.0), row("STG, nothing flagged, VAE", 13.0, 3.5),
                  {"variant": "STG, every image flagged, VAE, no checkpointing", "unit": "step", "batch": 1,
                   "refused": "needs 30 GiB"},
                  row("Train Steering Vector, codsma_cvector", 40.0, 5.0, unit="iteration", batch=2)])
    rows = {r[2]: r for r in rows_of(data)}
    assert rows["STG, nothing flagged, VAE"][3:6] == ["13.0 s/step", "1.30x", "3.50"]
    assert rows["STG, every image flagged, VAE, no checkpointing"][6] == "not run: needs 30 GiB"
    train = rows["Train Steering Vector, codsma_cvector"]
    assert train[4] == "2.00x" and train[6].startswith("batch 2")   # 40 s per iteration of 2 images vs 10 s each


def test_the_section_is_rendered_from_the_kept_results_of_each_model(tmp_path, monkeypatch):
    import json

    from benchmarks import bench_real_size
    from benchmarks.common import BenchContext

    monkeypatch.setattr(bench_real_size, "kept_path", lambda key, device: str(tmp_path / f"{key}-{device}.json"))
    sd15 = found([dict(row("plain KSampler", 10.0, 2.0), evaluations=[10.5, 9.5]),
                  row("STG, nothing flagged, TAESD", 11.0, 2.5)])
    sd15.update(elapsed_s=600.0, exit=0, date="2026-12-07")
    (tmp_path / "sd15-cpu.json").write_text(json.dumps(sd15))
    sdxl = {"label": "SDXL", "precisions": {}, "elapsed_s": 300.0, "exit": 3, "date": "2026-12-08"}   # stopped early
    (tmp_path / "sdxl-cpu.json").write_text(json.dumps(sdxl))
    ctx = BenchContext("cpu", False, 1)
    text = bench_real_size.render(ctx)
    assert "| SD1.5 512 px | fp32 | STG, nothing flagged, TAESD | 11.0 s/step | 1.10x | 2.50 |" in text
    assert "| SD1.5 512 px | STG, nothing flagged, TAESD: <= 1.10x | 1.10x | met |" in text
    assert "SDXL: no result (exit 3)" in ctx.notes
    # the plain steps' spread: (10.5 - 9.5) / (10.5 + 9.5) = 5 %
    assert "SD1.5: its 2 plain steps took 9.5-10.5 s, so a ratio of one step is uncertain by about +-5 % on this " \
           "machine" in ctx.notes
    # 600 s + 300 s; each model's own time and date (one model can be run again alone: --keep)
    assert any(n.startswith("the whole benchmark took 15 min (SD1.5 10 min, 2026-12-07; SDXL 5 min, 2026-12-08")
               for n in ctx.notes)


def test_a_ratio_is_against_the_plain_steps_measured_right_before_its_variant():
    """The machine's speed drifts within a run: a variant's ratio uses the plain steps next to it where there are."""
    slow = dict(row("STG, nothing flagged, TAESD", 22.0, 2.5), plain_near=20.0)   # the machine at half speed
    data = found([row("plain KSampler", 10.0, 2.0), slow], parts={"TAESD decode": 1.0, "NudeNet score": 0.5})
    assert {r[2]: r for r in rows_of(data)}["STG, nothing flagged, TAESD"][4] == "1.10x"     # 22 / 20, not 22 / 10
    target = by_target(target_rows(data))["STG, nothing flagged, TAESD"]
    assert target[2:4] == ["1.10x", "met"] and "the plain step (20.0 s)" in target[4]


def test_the_flagged_and_training_targets_are_sd15s_and_a_near_miss_shows_its_size():
    rows = [row("plain KSampler", 10.0, 2.0), row("Dual latent, tau_gc 0.5 (f 0.5)", 13.03, 2.0),
            row("STG, every image flagged, TAESD, checkpointing", 40.0, 1.0),
            row("Train Steering Vector, embedding_direction", 30.0, 0.5, unit="iteration")]
    sdxl = dict(found(rows), model="sdxl")
    got = by_target(target_rows(sdxl))
    assert set(got) == {"Dual latent, tau_gc 0.5 (f 0.5)", "STG, every image flagged, TAESD, checkpointing"}
    assert got["STG, every image flagged, TAESD, checkpointing"][1].endswith("peak <= 8 GiB (an 8 GB card)")
    assert got["Dual latent, tau_gc 0.5 (f 0.5)"][3] == "missed by 0.003x"    # 1.303 > 1.30
    assert len(target_rows(dict(found(rows), model="sd15"))) == 4


def test_an_unflagged_variant_skipped_for_time_is_estimated_from_its_parts_and_says_so():
    """SDXL at 1024 px skips STG without a flag and with the VAE (one decode ~90 s here): its verdict is then the
    plain step + one decode + one score, timed alone, and marked as an estimate; a variant that is merely missing
    (not skipped) still gets none."""
    data = dict(found([row("plain KSampler", 100.0, 1.0)], parts={"VAE decode": 90.0, "TAESD decode": 6.0,
                                                                  "NudeNet score": 0.5}),
                skip=["STG, nothing flagged, VAE"])
    got = by_target(target_rows(data))
    vae = got["STG, nothing flagged, VAE"]
    assert vae[2] == f"~{(100 + 90 + 0.5) / 100:.2f}x (from its parts; not run)"
    assert vae[3] == f"estimated: missed by {1.905 - 1.3:.2f}x ({1.905 / 1.3:.2f}x the target)"
    assert "VAE decode (90.0 s)" in vae[4] and "timed alone" in vae[4]
    assert "STG, nothing flagged, TAESD" not in got
