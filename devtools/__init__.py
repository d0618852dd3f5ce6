"""Developer tools of the pack: a real ComfyUI for tests, demos, benchmarks and workflow files.

Imported as ``devtools`` with the repository root on the path (pytest's ``pythonpath``, or
``python -m devtools.<tool>`` from the root); see devtools/README.md for the layout.
"""
