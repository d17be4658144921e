"""An example replacement policy for xpemu's pager: second chance, in thirty lines.

Copy this file, change `choose`, and measure it (docs/policy.md):

    xpemu policy --trace zipf --policy mypolicy:MyPolicy
    xpemu policy --trace rec.bin --policy mypolicy:MyPolicy   # a trace `xpemu up` recorded
    xpemu up --policy mypolicy:MyPolicy                       # live, in a real pager
"""


class MyPolicy:
    """A hand sweeps the gfns; one the guest touched since the hand last passed is spared."""

    name = "my-second-chance"

    def __init__(self, nr_gfns, accessed):
        self.nr_gfns = nr_gfns
        self.accessed = accessed  # await accessed(start, count): hv's accessed bits, cleared
        self.paged = bytearray(nr_gfns)  # 1: paged out (the pager tells us)
        self.hand = 0

    async def choose(self, n, skip):
        """Up to n distinct resident gfns to page out, none for which skip(gfn) holds."""
        out = []
        for _ in range(2 * self.nr_gfns):  # two turns: the first clears every bit it reads
            if len(out) == n:
                break
            g, self.hand = self.hand, (self.hand + 1) % self.nr_gfns
            if self.paged[g] or skip(g) or g in out:
                continue
            bits = await self.accessed(g, 1)  # one gfn: a round trip to hv per call
            if not bits[0] & 1:
                out.append(g)
        return out

    def paged_out(self, gfn):
        self.paged[gfn] = 1

    def paged_in(self, gfn, *, mru=True):
        self.paged[gfn] = 0

    def dropped(self, gfn):
        self.paged[gfn] = 0
