"""The ways shieldwall can run on an interface, best first, and what each loses against
the one before it. `up --mode auto` walks this order from the best mode the doctor says
the host can run, and `status` shows the mode in force with its cost."""

from __future__ import annotations

MODES = ("native", "generic", "tc", "nft")

LOSES: dict[str, str] = {
    "native": "nothing: packets are decided in the driver, before the kernel allocates an sk_buff",
    "generic": "the driver's head start: XDP runs after the sk_buff is allocated, so every "
               "dropped packet still costs an allocation and the receive path up to the hook",
    "tc": "XDP itself: the same stages run at TC ingress on an sk_buff (allocation, GRO and "
          "the taps before it), and SYN-ACKs leave through the qdisc instead of XDP_TX",
    "nft": "the BPF data plane: the policy becomes one nftables ruleset at netdev ingress; "
           "stages nftables cannot express are listed and left out",
}


def check_mode(mode: str, allow_auto: bool = True) -> str:
    if mode == "auto" and allow_auto:
        return mode
    if mode not in MODES:
        choices = ", ".join(("auto",) + MODES if allow_auto else MODES)
        raise ValueError(f"unknown mode {mode!r}; choose one of {choices}")
    return mode


def after(mode: str) -> tuple[str, ...]:
    """The modes to fall back to from `mode`, in order."""
    return MODES[MODES.index(mode) + 1:]
