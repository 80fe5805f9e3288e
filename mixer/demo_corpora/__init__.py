"""The offline demo corpora: real text fetched from package registries for tests and the example study."""
