"""Training steering vectors inside ComfyUI (issue #3).

* ``unet``: differentiable eps predictions of a loaded ComfyUI model (zero-copy frozen
  aliases of inference-tensor weights, bottleneck offsets, text-embedding shifts,
  optional gradient checkpointing);
* ``rollout``: batched reverse-process rollouts to z_t (each sample stops at its own t);
* ``objectives``: embedding direction, CoDSMa c-vector, RespoDiff RAM + SAM;
* ``loop``: the shared loop (seeds, timestep sampling, Adam, progress, cancellation,
  checkpoints, loss history); ``checkpoint``: resumable safetensors checkpoints;
* ``plot``: loss history -> image.
"""
