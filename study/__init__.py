"""The study application: runs grids named by a study spec (deployments/study/*.yaml) and
writes docs/results.md from the cells it reads back.  It uses heft as any user would; the
facts of one study (titles, section numbers, cells compared, the paper's figures, measured
records, reproduce commands) live in the study's YAML, not here."""
