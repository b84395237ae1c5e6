"""shieldwall's policy as nftables: the reduction of a policy to value intervals (ir),
the ruleset writer (ruleset), and what `up --mode nft` compiles and applies (compile)."""
