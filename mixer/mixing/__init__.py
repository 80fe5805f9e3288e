"""Stage 2: token stores -> a mix (spec, schedule, streams, shards, build, multi-stage recipes)."""
