"""asv benchmarks for Timbral (see ../asv.conf.json)."""
