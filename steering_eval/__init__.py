"""Benchmark-scale evaluation of steering configurations over ComfyUI servers, scheduled with Ray.

``python -m steering_eval run ...`` sends one prompt JSON per (prompt, seed) of a benchmark (I2P,
Winobias, any prompt list) to ComfyUI servers, judges every image with the pack's own scores in
the graph, stores one row per image as it arrives (resumable, never counted twice) and writes a
report; ``python -m steering_eval report`` re-writes the report from the store.

One module per concern, none of which imports ComfyUI or torch:

* ``prompt_sets`` - benchmark files -> prompts -> (prompt, seed) tasks;
* ``workflow`` - UI/API workflows, the marked inputs (prompt, seed, guidance, judged output), filling;
* ``judging`` - the pack's evaluation nodes added to the graph, their per-image verdicts read back;
* ``comfy_client`` - one server over HTTP (/prompt, /history, /view), failures sorted by cause;
* ``scheduler`` - Ray actors (one per server), back-pressure, re-queueing on dead or hung servers;
* ``results`` - the SQLite store (transactional, idempotent) and its Parquet export;
* ``report`` - unsafe rates with Wilson intervals, deviation ratios, CLIP scores, comparisons, plots;
* ``progress`` - the progress line; ``cli`` - the command.

Ray and pyarrow are optional dependencies of the pack (extra ``eval``; scripts/requirements-dev.txt).
"""
