"""Thin NETLINK_NETFILTER socket: send requests, hand back raw message frames.

All parsing stays in :mod:`wanlb.ctnetlink.codec`; this module only owns the file
descriptor, the receive buffer, sequence numbers and the end-of-dump / error /
interrupted-dump bookkeeping that every request needs.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from collections.abc import Iterator

from wanlb.ctnetlink import codec
from wanlb.ctnetlink import constants as C

# The kernel caps one dump skb at 32 KiB; events are single small messages.
_RECV_BUF = 256 * 1024
_MSG_TRUNC = int(socket.MSG_TRUNC)  # a plain int: `flags | socket.MSG_TRUNC` built an enum per datagram
_F_SETPIPE_SZ = 1031
Buffer = memoryview | bytes
Frame = tuple[Buffer, int, int, int]  # (buffer, offset, length, nlmsg type)


def _is_last(buf: memoryview, n: int, seq: int) -> bool:
    """Does this datagram end the dump ``seq`` (NLMSG_DONE or an error)?"""
    for _off, _length, mtype, _flags, mseq in codec.iter_messages(buf, n):
        if mtype in (C.NLMSG_DONE, C.NLMSG_ERROR) and mseq == seq:
            return True
    return False


class DumpInterrupted(Exception):
    """The kernel flagged NLM_F_DUMP_INTR: the table changed under the dump."""


class NetlinkSocket:
    """One ctnetlink socket.  ``groups`` is a bitmask of NFNLGRP_* multicast groups."""

    def __init__(self, groups: int = 0, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, C.NETLINK_NETFILTER)
        try:
            if rcvbuf:
                self._set_rcvbuf(rcvbuf)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            self.sock.setsockopt(C.SOL_NETLINK, C.NETLINK_EXT_ACK, 1)
            self.sock.bind((0, groups))
        except OSError:
            self.sock.close()
            raise
        self._buf = bytearray(_RECV_BUF)
        self._view = memoryview(self._buf)
        self._seq = int.from_bytes(os.urandom(2), "little") << 8
        self._bulk_ready = False

    def _set_rcvbuf(self, size: int) -> None:
        """SO_RCVBUFFORCE (root) so event bursts are not capped by net.core.rmem_max."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, 33, size)  # SO_RCVBUFFORCE
        except PermissionError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)

    @property
    def view(self) -> memoryview:
        """The receive buffer; :meth:`recv` fills its start."""
        return self._view

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> NetlinkSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return self._seq

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, flags: int = 0) -> int:
        """Receive one datagram into the shared buffer; returns its length."""
        n = self.sock.recv_into(self._buf, _RECV_BUF, flags | _MSG_TRUNC)
        if n > _RECV_BUF:
            raise OSError(errno.EMSGSIZE, f"netlink message of {n} bytes exceeds the receive buffer")
        return n

    def dump(self, request: bytes, relay: bool = False) -> Iterator[Frame]:
        """Send a NLM_F_DUMP request and yield its data frames until NLMSG_DONE.

        A frame is only valid until the next one is requested (buffers are reused).
        If the kernel rejects the request, :class:`codec.NetlinkError` is raised
        before anything is yielded; a dump the kernel flagged as interrupted raises
        :class:`DumpInterrupted` after its last frame.

        ``relay=True`` receives in a forked child that forwards the datagrams
        through a pipe: the kernel's share of a dump (about half of it, spent
        inside ``recvmsg``) then runs on the other CPU while this process decodes.
        Only for single-threaded callers such as the CLI.
        """
        for chunk, frames in self.dump_batches(request, relay):
            for off, length, mtype in frames:
                yield chunk, off, length, mtype

    def dump_batches(self, request: bytes, relay: bool = False) -> Iterator[tuple[Buffer, list[tuple[int, int, int]]]]:
        """Like :meth:`dump`, one (buffer, [(offset, length, type), ...]) per datagram.

        For consumers of 250k entries: a plain loop over a list per datagram
        costs less than resuming a generator per entry.
        """
        seq = self.next_seq()
        request = request[:8] + seq.to_bytes(4, "little") + request[12:]
        chunks = self._relayed(request, seq) if relay else self._direct(request, seq)
        interrupted = False
        for chunk in chunks:
            frames = []
            for off, length, mtype, flags, mseq in codec.iter_messages(chunk, len(chunk)):
                if mseq != seq:
                    continue  # a late reply to an earlier request
                if flags & C.NLM_F_DUMP_INTR:
                    interrupted = True
                if mtype == C.NLMSG_DONE:
                    yield chunk, frames
                    if interrupted:
                        raise DumpInterrupted()
                    return
                if mtype == C.NLMSG_ERROR:
                    code = codec.error_code(chunk, off)
                    if code:
                        raise codec.NetlinkError(-code, os.strerror(-code))
                    continue
                frames.append((off, length, mtype))
            yield chunk, frames
        raise OSError(errno.EPIPE, "netlink dump ended without NLMSG_DONE")

    def _direct(self, request: bytes, seq: int) -> Iterator[memoryview]:
        self.send(request)
        while True:
            n = self.recv()
            yield self._view[:n]
            if _is_last(self._view, n, seq):
                return

    def _relayed(self, request: bytes, seq: int) -> Iterator[bytes]:
        r, w = os.pipe()
        fcntl.fcntl(w, _F_SETPIPE_SZ, 1 << 20)
        pid = os.fork()
        if pid == 0:  # child: receive and forward, nothing else
            code = 1
            try:
                os.close(r)
                self.send(request)
                while True:
                    n = self.recv()
                    os.write(w, n.to_bytes(4, "little") + self._view[:n])
                    if _is_last(self._view, n, seq):
                        code = 0
                        break
            finally:
                os._exit(code)
        os.close(w)
        try:
            with os.fdopen(r, "rb", buffering=1 << 20) as pipe:
                while len(head := pipe.read(4)) == 4:
                    yield pipe.read(int.from_bytes(head, "little"))
        finally:
            os.waitpid(pid, 0)

    def transact(self, requests: list[bytes]) -> list[int]:
        """Send many create/delete requests and return each one's errno (0 = ok).

        Requests go out in batches of ~256 KiB per system call, without NLM_F_ACK:
        the kernel only answers the ones that fail, and an ACKed GET_STATS after
        each batch marks where its answers end.  Creating or deleting 65k entries
        thus costs a few dozen system calls, and successes cost no receive-buffer
        space (65k ACKs would overflow it and be lost as ENOBUFS).
        """
        if not self._bulk_ready:
            self._set_rcvbuf(16 << 20)
            self.sock.setsockopt(C.SOL_NETLINK, C.NETLINK_CAP_ACK, 1)
            self._bulk_ready = True
        results: list[int] = []
        batch: list[bytes] = []
        size = 0
        for req in requests:
            batch.append(req)
            size += len(req)
            if size >= 256 * 1024:
                results += self._transact_batch(batch)
                batch, size = [], 0
        if batch:
            results += self._transact_batch(batch)
        return results

    def _transact_batch(self, batch: list[bytes]) -> list[int]:
        out = []
        index: dict[int, int] = {}
        for i, req in enumerate(batch):
            seq = self.next_seq()
            index[seq] = i
            flags = int.from_bytes(req[6:8], "little") & ~C.NLM_F_ACK
            out.append(req[:6] + flags.to_bytes(2, "little") + seq.to_bytes(4, "little") + req[12:])
        barrier = self.next_seq()
        out.append(codec.encode_stats(barrier))
        self.send(b"".join(out))
        codes = [0] * len(batch)
        view = self._view
        while True:
            n = self.recv()
            for off, _length, mtype, _flags, seq in codec.iter_messages(view, n):
                if mtype == C.NLMSG_ERROR and seq in index:
                    codes[index[seq]] = -codec.error_code(view, off)
                elif seq == barrier and mtype == C.NLMSG_ERROR:
                    return codes

    def request(self, req: bytes) -> list[bytes]:
        """Send one request with NLM_F_ACK; return the data messages of the reply (copied)."""
        seq = self.next_seq()
        self.send(req[:8] + seq.to_bytes(4, "little") + req[12:])
        out: list[bytes] = []
        view = self._view
        while True:
            n = self.recv()
            for off, length, mtype, _flags, mseq in codec.iter_messages(view, n):
                if mseq != seq:
                    continue
                if mtype == C.NLMSG_ERROR:
                    code = codec.error_code(view, off)
                    if code:
                        raise codec.NetlinkError(-code, os.strerror(-code))
                    return out
                out.append(bytes(view[off : off + length]))
