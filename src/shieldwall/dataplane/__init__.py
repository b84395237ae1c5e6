"""The data plane as the control plane sees it: objects, the stage chain, pins."""
