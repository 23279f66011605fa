"""The models: the two families behind one score interface (models.py), LoReFT as a hook
(loreft.py), batched scoring (scoring.py), the training loop (training.py), CPU precision
(precision.py) and model-name resolution without torch (names.py)."""
