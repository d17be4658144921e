"""The policy lab behind `xpemu policy` and the bench's policy section: traces (recorded
and synthetic), a trace replayed through a real pager policy, the offline references
(Belady, A0, exact LRU by Mattson's stack algorithm, ARC), the table and the curves."""
