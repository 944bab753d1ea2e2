"""``wsi-ai bench``: every stage's throughput on a lab's own slides, next to its limit.

:mod:`.measure` times the stages (input reading, the model alone, end to end, stitching,
exports) and the limits they are compared with (the file's read rate, the raw tile decode
rate on all cores or on the GPU, the backbone on random tensors); :mod:`.monitor` samples
host and GPU memory and GPU utilisation while they run; :mod:`.report` turns the figures
into the table, the JSON and the one-line verdict on what binds.
"""
