"""The methods' maths: plain functions and small classes over tensors and ComfyUI
model objects. No node classes live here (see ../nodes)."""
