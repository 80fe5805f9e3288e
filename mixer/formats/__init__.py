"""The files that pass between stages: the one reader of each, its format's constants
(versions, dtypes, names) and the writers stages share (atomic files, JSON). The stages
that make a file still assemble its content themselves (docs/architecture.md).

Everything here needs numpy (and xxhash for checksums) only, so a trainer adapter or an
outside consumer can read a store, a mix, a run or a fit without the rest of mixer.
"""
