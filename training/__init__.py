"""Training steering vectors inside ComfyUI (issue #3).

* ``unet``: differentiable eps predictions of a loaded ComfyUI model (zero-copy frozen
  aliases of inference-tensor weights, bottleneck offsets, text-embedding shifts,
  optional gradient checkpointing);
* ``rollout``: batched reverse-process rollouts to z_t (each sample stops at its own t),
  euler (DDIM) or lms steps;
* ``objectives``: one class per objective (embedding direction, CoDSMa c-vector, RespoDiff
  RAM + SAM) in the ``OBJECTIVES`` registry the node and the loop are built from;
* ``loop``: the shared loop (seeds, on-policy or random-timestep schedule, Adam, progress,
  cancellation, checkpoints, loss history); ``checkpoint``: resumable safetensors checkpoints;
* ``plot``: loss history -> image.
"""
