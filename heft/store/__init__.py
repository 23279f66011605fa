"""Where artifacts live and what they are called: keys (keys.py), content fingerprints of
data and models (fingerprints.py), file hashing (hashing.py), the artifact store
(artifacts.py), build locks (locks.py), epoch checkpoints (checkpoints.py), fsspec (fs.py),
damaged artifacts (damage.py), full disks named (space.py)."""
