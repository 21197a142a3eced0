"""Names a flow's first bytes carry (TLS SNI, HTTP Host, DNS question), parsed without trusting
them, and the compiled name lists a policy matches them against."""
