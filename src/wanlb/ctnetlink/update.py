"""What ``conntrack -U`` changes on an entry, as data.

conntrack(8)'s semantics, checked against conntrack-tools 1.4.7: ``-m VALUE[/MASK]`` *sets* the mark to
``(old & ~MASK) ^ VALUE`` (it selects nothing: ``-U -m 0x300/0xff00`` moves every selected entry onto
0x300 and keeps the mark's low byte), ``-u`` adds status bits (an update never clears one), ``-t`` and
``--state`` replace the timeout and the TCP state.  An entry the change would leave as it is gets no
request and is not counted, as conntrack skips it.
"""

from __future__ import annotations

from dataclasses import dataclass

from wanlb.ctnetlink import codec
from wanlb.ctnetlink import constants as C
from wanlb.ctnetlink.entry import Entry

_U32 = 0xFFFFFFFF


@dataclass(frozen=True)
class Change:
    """The values one ``-U`` sets; ``None`` leaves a field as it is."""

    mark: int | None = None
    mark_mask: int = _U32
    status: int | None = None  # bits to add
    timeout: int | None = None
    tcp_state: int | None = None

    def __post_init__(self) -> None:
        for name in ("mark", "mark_mask", "status", "timeout"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= _U32:
                raise ValueError(f"{name} {value} is out of range")

    def new_mark(self, old: int | None) -> int | None:
        """The mark an entry marked ``old`` gets (None: the mark is not changed)."""
        if self.mark is None:
            return None
        return ((old or 0) & ~self.mark_mask & _U32) ^ self.mark

    def alters(self, e: Entry) -> bool:
        """Whether applying the change to ``e`` changes anything (else conntrack sends nothing)."""
        return (
            (self.mark is not None and self.new_mark(e.mark) != (e.mark or 0))
            or (self.status is not None and e.status | self.status != e.status)
            or (self.timeout is not None and self.timeout != e.timeout)
            or (self.tcp_state is not None and self.tcp_state != e.tcp_state)
        )

    def encode(self, e: Entry, seq: int = 0) -> bytes:
        """The IPCTNL_MSG_CT_NEW (without NLM_F_CREATE) that applies the change to ``e``.

        The entry is found by its original tuple *and* zone (conntrack 1.4.7 leaves the zone out, so the
        kernel answers ENOENT for zoned entries), and the message carries the entry's own family
        (conntrack 1.4.7 sends the command line's, AF_UNSPEC without ``-f``, which the kernel refuses).
        The mark goes with CTA_MARK_MASK, so the kernel itself computes ``(mark & ~MASK) ^ VALUE``
        from the entry's current mark.
        """
        body = codec.orig_tuple(e)
        if e.zone is not None:
            body += codec.attr(C.CTA_ZONE, codec.be16(e.zone))
        if self.timeout is not None:
            body += codec.attr(C.CTA_TIMEOUT, codec.be32(self.timeout))
        if self.status is not None:
            body += codec.attr(C.CTA_STATUS, codec.be32(e.status | self.status))
        if self.tcp_state is not None:
            tcp = codec.nest(C.CTA_PROTOINFO_TCP, codec.attr(C.CTA_PROTOINFO_TCP_STATE, codec.be8(self.tcp_state)))
            body += codec.nest(C.CTA_PROTOINFO, tcp)
        if self.mark is not None:
            body += codec.attr(C.CTA_MARK, codec.be32(self.mark))
            body += codec.attr(C.CTA_MARK_MASK, codec.be32(self.mark_mask))
        return codec.message(C.IPCTNL_MSG_CT_NEW, C.NLM_F_ACK, e.family, body, seq)
