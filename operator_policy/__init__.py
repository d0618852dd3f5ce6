"""The operator's safety policy: a security boundary in the ComfyUI server, for every prompt, whoever sends it.

Threat model: anyone who can POST a prompt (browser, API client, another frontend) is hostile; every input a
submitted graph carries is hostile; the server, its files and its installed nodes are the operator's. The
promise: no image the model makes leaves the server unscored (files, /view, /history, websocket previews); a
flagged image leaves only censored; data the policy cannot inspect (latents, masks, tensors as text, ...)
does not leave unless the operator allows it by node type; every released image carries a record the
server signed. What it does not promise: the scores are classifiers and word lists (they miss things and flag
benign images); images written by custom nodes straight to disk are not served but stay on disk; prompts
queued by server-side code that bypasses POST /prompt are not read.

One module per concern, imports pointing down:

* ``document``: the policy file (pydantic models, strict reading, the published schema);
* ``graph``: pure functions over the submitted prompt (read it with ComfyUI's link rules, classify every
  value, say where guards go and what is refused), testable without ComfyUI;
* ``scoring``: the guards' verdict on an image batch (whole images and local windows) and the censoring;
* ``provenance``: the audit log, the server's signing key, signed image records and ``verify``;
* ``enforcement``: the prompt handler, the guard node's work, node expansions, what leaves the server;
* ``routes`` (the panel's GET route) and ``install`` (build at start-up, hook the server).

``python -m operator_policy verify IMAGE.png --policy policy.json`` checks a saved PNG's record.
"""
