"""The files that pass between stages, each read and written here: its reader, its
format's constants (versions, dtypes, names) and its writer, which refuses content of
another format; the stages compute what goes into a file and call these to write it.

Everything here needs numpy (and xxhash for checksums) only, so a trainer adapter or an
outside consumer can read a store, a mix, a run or a fit without the rest of mixer.
"""
