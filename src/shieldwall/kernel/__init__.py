"""A thin, typed layer over the system libbpf (libbpf.so.1)."""
