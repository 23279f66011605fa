"""Where artifacts live and what they are called: keys (keys.py), file hashing (hashing.py),
the artifact store (artifacts.py), damaged entries (damage.py), build locks (locks.py), epoch
checkpoints (checkpoints.py), fsspec (fs.py), full disks named (space.py).  Content fingerprints
of the data and models a run reads are heft/fingerprints.py."""
