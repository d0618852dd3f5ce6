"""Training steering vectors inside ComfyUI.

* ``unet``: differentiable eps predictions of a loaded ComfyUI model (zero-copy frozen
  aliases of inference-tensor weights, bottleneck offsets, text-embedding shifts; gradient
  checkpointing comes from steering.checkpointing, shared with STG);
* ``rollout``: batched reverse-process rollouts to z_t (each sample stops at its own t),
  euler (DDIM) or lms steps;
* ``objectives``: one class per objective (embedding direction, CoDSMa c-vector, RespoDiff
  RAM + SAM) in the ``OBJECTIVES`` registry the node and the loop are built from;
* ``loop``: the shared loop (seeds, on-policy or random-timestep schedule, Adam, progress,
  cancellation, checkpoints, loss history); ``checkpoint``: resumable safetensors checkpoints;
* ``session``: one run as the Train Steering Vector node asks for it (prompt texts,
  text encoding, the run's checkpoint file, the vector file written);
* ``plot``: loss history -> image.
"""
