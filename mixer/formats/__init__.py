"""The files that pass between stages, and the one place each is read and written.

Everything here needs numpy (and xxhash for checksums) only, so a trainer adapter or an
outside consumer can read a store, a mix, a run or a fit without the rest of mixer.
"""
