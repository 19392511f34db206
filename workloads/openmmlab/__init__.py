"""OpenMMLab models (mmdetection 3.x / mmdetection3d 1.x configs) on any device.

So far the portable half of mmcv's compiled ops: pure-PyTorch ops with mmcv 2.1's Python
signatures (ops*.py), the import shim that makes `mmcv.ops` resolve to them where mmcv's
compiled extension is absent (mmcv_ops_shim.py), and the registry through which a backend
plugin's native kernels replace them (kernels.py). See docs/openmmlab.md.
"""
