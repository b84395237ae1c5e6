"""Pure-Python reference models of the data plane, used to check the BPF programs."""
