#!/usr/bin/env python3
"""Writes the committed seed corpus (corpus/<target>/) in each target's input format (see the header
comment of Sources/<target>/main.swift). Run from anywhere; it rewrites only the seed-* files."""
import os, struct, glob

HERE = os.path.dirname(os.path.abspath(__file__))
u32 = lambda v: struct.pack('<I', v & 0xffffffff)
u64 = lambda v: struct.pack('<Q', v & 0xffffffffffffffff)
u16 = lambda v: struct.pack('<H', v & 0xffff)

# vhost-user request codes and flags (vhost-user.rst)
GET_FEATURES, SET_FEATURES, SET_OWNER, RESET_OWNER, SET_MEM_TABLE = 1, 2, 3, 4, 5
SET_VRING_NUM, SET_VRING_ADDR, SET_VRING_BASE, GET_VRING_BASE = 8, 9, 10, 11
SET_VRING_KICK, SET_VRING_CALL, SET_VRING_ERR = 12, 13, 14
GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES, GET_QUEUE_NUM, SET_VRING_ENABLE = 15, 16, 17, 18
GET_CONFIG, SET_CONFIG, GET_MAX_MEM_SLOTS, ADD_MEM_REG, REM_MEM_REG = 24, 25, 36, 37, 38
GET_INFLIGHT_FD, SET_INFLIGHT_FD = 31, 32
V1, REPLY, NEED_REPLY = 1, 4, 8
FD_EVENT, FD_MEM, FD_WITH_PAYLOAD = 0x00, 0x10, 0x20

# What QEMU 7.2 acknowledges for a vhost-user-blk device: VERSION_1, PROTOCOL_FEATURES, EVENT_IDX,
# INDIRECT_DESC, and blk SIZE_MAX|SEG_MAX|BLK_SIZE|TOPOLOGY|FLUSH|MQ.
FEATURES = 1 << 32 | 1 << 30 | 1 << 29 | 1 << 28 | 1 << 1 | 1 << 2 | 1 << 6 | 1 << 10 | 1 << 9 | 1 << 12
PROTO = 1 << 0 | 1 << 3 | 1 << 9 | 1 << 15  # MQ, REPLY_ACK, CONFIG, CONFIGURE_MEM_SLOTS
PROTO_INFLIGHT = PROTO | 1 << 12  # + INFLIGHT_SHMFD, as QEMU 7.2 acknowledges it
UA = 0x7f0000000000  # front-end virtual address of guest memory
MEMFD = 256 << 10   # FuzzFD.memfdSize

def region(gpa=0, size=MEMFD, ua=UA, off=0):
    return u64(gpa) + u64(size) + u64(ua) + u64(off)

def msg(req, payload=b'', flags=V1, nfds=0, kind=FD_EVENT, size=None):
    """One fuzz-session record: ctl byte, header, payload."""
    return bytes([nfds | kind]) + u32(req) + u32(flags) + u32(len(payload) if size is None else size) + payload

def vstate(i, n): return u32(i) + u32(n)
def vaddr(i, desc, avail, used, flags=0, log=0): return u32(i) + u32(flags) + u64(desc) + u64(used) + u64(avail) + u64(log)

def inflight(mmap_size, off=0, queues=2, qsize=128, pad=True):
    return u64(mmap_size) + u64(off) + u16(queues) + u16(qsize) + (bytes(4) if pad else b'')

def handshake(mem_msg=None, q=0, size=128, with_reply_ack=True, enable=True, inflight_msgs=()):
    flags = V1 | NEED_REPLY if with_reply_ack else V1
    out = [
        msg(GET_FEATURES), msg(GET_PROTOCOL_FEATURES), msg(SET_PROTOCOL_FEATURES, u64(PROTO_INFLIGHT if inflight_msgs else PROTO)),
        msg(GET_QUEUE_NUM), msg(GET_MAX_MEM_SLOTS), msg(SET_OWNER),
        msg(GET_CONFIG, u32(0) + u32(60) + u32(0) + bytes(60)),
        msg(SET_FEATURES, u64(FEATURES), flags=flags),
        *inflight_msgs,
        mem_msg if mem_msg is not None else msg(ADD_MEM_REG, u64(0) + region(), flags=flags, nfds=1, kind=FD_MEM),
        msg(SET_VRING_NUM, vstate(q, size), flags=flags),
        msg(SET_VRING_BASE, vstate(q, 0), flags=flags),
        msg(SET_VRING_ADDR, vaddr(q, UA, UA + 0x4000, UA + 0x5000), flags=flags),
        msg(SET_VRING_KICK, u64(q), flags=flags, nfds=1),
        msg(SET_VRING_CALL, u64(q), flags=flags, nfds=1),
    ]
    if enable: out.append(msg(SET_VRING_ENABLE, vstate(q, 1), flags=flags))
    return b''.join(out)

def session_seeds():
    s = {}
    s['qemu72-handshake'] = handshake()
    s['qemu72-handshake-getbase'] = handshake() + msg(GET_VRING_BASE, vstate(0, 0))
    s['memtable-handshake'] = handshake(msg(SET_MEM_TABLE, u32(1) + u32(0) + region(), nfds=1, kind=FD_MEM))
    s['two-queues'] = handshake() + b''.join([
        msg(SET_VRING_NUM, vstate(1, 64)), msg(SET_VRING_ADDR, vaddr(1, UA + 0x8000, UA + 0x9000, UA + 0xa000)),
        msg(SET_VRING_KICK, u64(1), nfds=1), msg(SET_VRING_ENABLE, vstate(1, 1)),
        msg(GET_VRING_BASE, vstate(1, 0)), msg(GET_VRING_BASE, vstate(0, 0))])
    s['reset-owner'] = handshake() + msg(RESET_OWNER) + msg(GET_FEATURES)
    s['rem-mem-reg'] = handshake() + msg(REM_MEM_REG, u64(0) + region(), flags=V1 | NEED_REPLY)
    s['no-protocol-features'] = b''.join([msg(GET_FEATURES), msg(SET_FEATURES, u64(1 << 32)),
        msg(SET_MEM_TABLE, u32(1) + u32(0) + region(), nfds=1, kind=FD_MEM), msg(SET_VRING_NUM, vstate(0, 16)),
        msg(SET_VRING_ADDR, vaddr(0, UA, UA + 0x100, UA + 0x200)), msg(SET_VRING_KICK, u64(0x100))])
    # Hostile: memory larger than the file, offset past it, wrapping addresses, too many regions.
    s['mem-larger-than-file'] = handshake(msg(ADD_MEM_REG, u64(0) + region(size=1 << 30), flags=V1 | NEED_REPLY, nfds=1, kind=FD_MEM))
    s['mem-offset-past-file'] = handshake(msg(ADD_MEM_REG, u64(0) + region(off=MEMFD), flags=V1 | NEED_REPLY, nfds=1, kind=FD_MEM))
    s['mem-wraps'] = handshake(msg(SET_MEM_TABLE, u32(1) + u32(0) + region(gpa=2**64 - 4096, ua=2**64 - 4096), nfds=1, kind=FD_MEM))
    s['mem-unaligned-offset'] = handshake(msg(ADD_MEM_REG, u64(0) + region(size=4096, off=4095), flags=V1 | NEED_REPLY, nfds=1, kind=FD_MEM))
    s['mem-eventfd'] = handshake(msg(SET_MEM_TABLE, u32(1) + u32(0) + region(), nfds=1, kind=FD_EVENT))
    s['mem-8-regions'] = msg(SET_MEM_TABLE, u32(8) + u32(0) + b''.join(region(gpa=i << 18, ua=UA + (i << 18)) for i in range(8)), nfds=8, kind=FD_MEM)
    s['ring-outside-memory'] = handshake() + msg(SET_VRING_ADDR, vaddr(0, UA + MEMFD - 16, UA, UA), flags=V1 | NEED_REPLY)
    s['queue-index-too-big'] = handshake() + msg(SET_VRING_NUM, vstate(7, 128))
    s['vring-num-not-pow2'] = handshake() + msg(SET_VRING_NUM, vstate(0, 100), flags=V1 | NEED_REPLY)
    s['too-many-fds'] = msg(SET_VRING_KICK, u64(0), nfds=12)
    s['fds-with-payload'] = msg(SET_VRING_KICK, u64(0), nfds=1, kind=FD_WITH_PAYLOAD)
    s['truncated-payload'] = msg(SET_FEATURES, u64(FEATURES)[:3], size=8)
    s['truncated-header'] = msg(GET_FEATURES)[:7]
    s['payload-too-large'] = msg(SET_CONFIG, bytes(16), size=0x10000)
    s['reply-flag'] = msg(GET_FEATURES, flags=V1 | REPLY)
    s['set-config'] = handshake() + msg(SET_CONFIG, u32(0) + u32(4) + u32(0) + bytes(4), flags=V1 | NEED_REPLY)
    s['get-config-oob'] = handshake() + msg(GET_CONFIG, u32(250) + u32(16) + u32(0) + bytes(16))
    s['features-not-offered'] = msg(SET_FEATURES, u64(2**64 - 1), flags=V1 | NEED_REPLY)
    # INFLIGHT_SHMFD as QEMU 7.2 sends it (2 queues of 128: 2 x 2112 bytes), then hostile variants.
    get = msg(GET_INFLIGHT_FD, inflight(0))
    s['inflight-handshake'] = handshake(inflight_msgs=(get, msg(SET_INFLIGHT_FD, inflight(4224), nfds=1, kind=FD_MEM)))
    s['inflight-unpadded'] = handshake(inflight_msgs=(msg(GET_INFLIGHT_FD, inflight(0, pad=False)),
                                                      msg(SET_INFLIGHT_FD, inflight(4224, pad=False), nfds=1, kind=FD_MEM)))
    s['inflight-too-small'] = handshake(inflight_msgs=(get, msg(SET_INFLIGHT_FD, inflight(64), flags=V1 | NEED_REPLY, nfds=1, kind=FD_MEM)))
    s['inflight-past-file'] = handshake(inflight_msgs=(get, msg(SET_INFLIGHT_FD, inflight(4224, off=MEMFD), flags=V1 | NEED_REPLY, nfds=1, kind=FD_MEM)))
    s['inflight-bad-geometry'] = handshake(inflight_msgs=(msg(GET_INFLIGHT_FD, inflight(0, queues=9, qsize=100)),))
    s['inflight-eventfd'] = handshake(inflight_msgs=(get, msg(SET_INFLIGHT_FD, inflight(4224), flags=V1 | NEED_REPLY, nfds=1)))
    s['inflight-swap-running'] = handshake(inflight_msgs=(get,)) + msg(SET_INFLIGHT_FD, inflight(4224), flags=V1 | NEED_REPLY, nfds=1, kind=FD_MEM)
    return s

def request_seeds():
    """fuzz-request: [ctl][request u32][flags u32][payload]."""
    r = lambda req, payload=b'', flags=V1, nfds=0, kind=FD_EVENT: bytes([nfds | kind]) + u32(req) + u32(flags) + payload
    s = {
        'get-features': r(GET_FEATURES), 'set-features': r(SET_FEATURES, u64(FEATURES)),
        'set-owner': r(SET_OWNER), 'reset-owner-8': r(RESET_OWNER, u64(0)),
        'mem-table': r(SET_MEM_TABLE, u32(1) + u32(0) + region(), nfds=1, kind=FD_MEM),
        'mem-table-2': r(SET_MEM_TABLE, u32(2) + u32(0) + region() + region(gpa=1 << 20), nfds=2, kind=FD_MEM),
        'mem-table-count-mismatch': r(SET_MEM_TABLE, u32(2) + u32(0) + region() + region(), nfds=1, kind=FD_MEM),
        'vring-num': r(SET_VRING_NUM, vstate(0, 128)), 'vring-base': r(SET_VRING_BASE, vstate(0, 5)),
        'get-vring-base': r(GET_VRING_BASE, vstate(1, 0)),
        'vring-addr': r(SET_VRING_ADDR, vaddr(0, UA, UA + 0x800, UA + 0x1000)),
        'vring-kick': r(SET_VRING_KICK, u64(0), nfds=1), 'vring-kick-nofd': r(SET_VRING_KICK, u64(0x100)),
        'vring-call': r(SET_VRING_CALL, u64(1), nfds=1), 'vring-err': r(SET_VRING_ERR, u64(0), nfds=1),
        'vring-kick-badbits': r(SET_VRING_KICK, u64(0x200), nfds=1),
        'protocol': r(SET_PROTOCOL_FEATURES, u64(PROTO)), 'get-protocol': r(GET_PROTOCOL_FEATURES),
        'queue-num': r(GET_QUEUE_NUM), 'enable': r(SET_VRING_ENABLE, vstate(0, 1)),
        'enable-2': r(SET_VRING_ENABLE, vstate(0, 2)),
        'get-config': r(GET_CONFIG, u32(0) + u32(60) + u32(0) + bytes(60)),
        'set-config': r(SET_CONFIG, u32(32) + u32(1) + u32(0) + bytes(1)),
        'config-too-big': r(GET_CONFIG, u32(0) + u32(300) + u32(0)),
        'max-mem-slots': r(GET_MAX_MEM_SLOTS),
        'add-mem-reg': r(ADD_MEM_REG, u64(0) + region(), nfds=1, kind=FD_MEM),
        'rem-mem-reg-fd': r(REM_MEM_REG, u64(0) + region(), nfds=1, kind=FD_MEM),
        'need-reply': r(SET_OWNER, flags=V1 | NEED_REPLY), 'reply-flag': r(SET_OWNER, flags=V1 | REPLY),
        'bad-version': r(SET_OWNER, flags=2), 'unknown-flags': r(SET_OWNER, flags=V1 | 0x10),
        'unknown-request': r(99), 'not-negotiated': r(35), 'fds-on-get': r(GET_FEATURES, nfds=3),
        'get-inflight': r(GET_INFLIGHT_FD, inflight(0)), 'set-inflight': r(SET_INFLIGHT_FD, inflight(4224), nfds=1, kind=FD_MEM),
        'set-inflight-unpadded': r(SET_INFLIGHT_FD, inflight(4224, pad=False), nfds=1, kind=FD_MEM),
    }
    return s

def blk_seeds():
    """fuzz-blkqueue: [cfg][nextAvail u16][usedIdx u16][n u16][image][patches: offset u32, len u8, bytes]."""
    NEXT, WRITE, INDIRECT = 1, 2, 4
    def desc(addr, length, flags, nxt=0): return u64(addr) + u32(length) + u16(flags) + u16(nxt)
    def layout(log2):  # mirrors runQueue's ring placement
        n = 1 << log2
        avail = 16 * n
        used = (avail + 6 + 2 * n + 3) & ~3
        return n, avail, used
    def image(log2, descs, heads, extra=(), avail_idx=None, cfg_bits=0, next_avail=0, used_idx=0, patches=()):
        cfg_bits |= log2 & 0xf0  # callers may fold cfg bits into the first argument
        log2 &= 0x0f
        n, avail, used = layout(log2)
        img = bytearray(max([used + 6 + 8 * n] + [o + len(b) for o, b in extra]))
        for i, d in enumerate(descs): img[16 * i:16 * i + 16] = d
        idx = len(heads) if avail_idx is None else avail_idx
        img[avail:avail + 4] = u16(0) + u16(idx)
        for i, h in enumerate(heads): img[avail + 4 + 2 * i:avail + 6 + 2 * i] = u16(h)
        for o, b in extra: img[o:o + len(b)] = b
        out = bytes([log2 | cfg_bits]) + u16(next_avail) + u16(used_idx) + u16(len(img)) + bytes(img)
        for o, b in patches: out += u32(o) + bytes([len(b)]) + b
        return out
    HDR, DATA, STATUS = 0x400, 0x800, 0x3f0  # inside the image for small queues
    hdr = lambda t, sector=0: u32(t) + u32(0) + u64(sector)
    s = {}
    s['read'] = image(2, [desc(HDR, 16, NEXT, 1), desc(DATA, 512, WRITE | NEXT, 2), desc(STATUS, 1, WRITE)], [0], [(HDR, hdr(0, 2))])
    s['write'] = image(2, [desc(HDR, 16, NEXT, 1), desc(DATA, 512, NEXT, 2), desc(STATUS, 1, WRITE)], [0], [(HDR, hdr(1, 8)), (DATA, b'\xab' * 512)])
    s['write-readonly'] = image(2 | 0x20, [desc(HDR, 16, NEXT, 1), desc(DATA, 512, NEXT, 2), desc(STATUS, 1, WRITE)], [0], [(HDR, hdr(1, 8))])
    s['flush'] = image(2, [desc(HDR, 16, NEXT, 1), desc(STATUS, 1, WRITE)], [0], [(HDR, hdr(4))], cfg_bits=0x40)
    s['get-id'] = image(2, [desc(HDR, 16, NEXT, 1), desc(DATA, 20, WRITE | NEXT, 2), desc(STATUS, 1, WRITE)], [0], [(HDR, hdr(8))])
    seg = lambda sector, num, flags=0: u64(sector) + u32(num) + u32(flags)
    s['discard'] = image(2, [desc(HDR, 16, NEXT, 1), desc(DATA, 16, NEXT, 2), desc(STATUS, 1, WRITE)], [0], [(HDR, hdr(11)), (DATA, seg(0, 8))], cfg_bits=0x40)
    s['write-zeroes-unmap'] = image(2, [desc(HDR, 16, NEXT, 1), desc(DATA, 16, NEXT, 2), desc(STATUS, 1, WRITE)], [0], [(HDR, hdr(13)), (DATA, seg(8, 8, 1))], cfg_bits=0x40)
    s['read-one-descriptor'] = image(2, [desc(HDR, 16 + 512 + 1, WRITE)], [0], [])  # any framing is legal
    s['read-4k-blocks'] = image(2 | 0x80, [desc(HDR, 16, NEXT, 1), desc(DATA, 4096, WRITE | NEXT, 2), desc(STATUS, 1, WRITE)], [0], [(HDR, hdr(0, 8))])
    s['indirect'] = image(2, [desc(0x300, 48, INDIRECT)], [0], [(0x300, desc(HDR, 16, NEXT, 1) + desc(DATA, 512, WRITE | NEXT, 2) + desc(STATUS, 1, WRITE))])
    s['two-chains-event-idx'] = image(3 | 0x10, [desc(HDR, 16, NEXT, 1), desc(STATUS, 1, WRITE), desc(HDR + 16, 16, NEXT, 3), desc(STATUS + 1, 1, WRITE)], [0, 2], [(HDR, hdr(8)), (HDR + 16, hdr(4))])
    s['published-later'] = image(2, [desc(HDR, 16, NEXT, 1), desc(DATA, 512, WRITE | NEXT, 2), desc(STATUS, 1, WRITE)], [0], [], avail_idx=0, patches=[(16 * 4 + 2, u16(1))])
    # Hostile shapes.
    s['loop'] = image(2, [desc(HDR, 16, NEXT, 1), desc(DATA, 512, WRITE | NEXT, 0)], [0], [])
    s['next-out-of-range'] = image(2, [desc(HDR, 16, NEXT, 9)], [0], [])
    s['head-out-of-range'] = image(2, [], [7], [])
    s['avail-jump'] = image(2, [], [], avail_idx=0x8000)
    s['nested-indirect'] = image(2, [desc(0x300, 16, INDIRECT)], [0], [(0x300, desc(0x300, 16, INDIRECT))])
    s['indirect-bad-len'] = image(2, [desc(0x300, 17, INDIRECT)], [0], [])
    s['buffer-at-region-end'] = image(2, [desc((1 << 20) - 8, 16, NEXT, 1), desc((1 << 20) - 1, 2, WRITE)], [0], [])
    s['length-overflow'] = image(2, [desc(HDR, 0xffffffff, NEXT, 1), desc(2**64 - 16, 0xffffffff, WRITE)], [0], [])
    s['sector-past-end'] = image(2, [desc(HDR, 16, NEXT, 1), desc(DATA, 512, WRITE | NEXT, 2), desc(STATUS, 1, WRITE)], [0], [(HDR, hdr(0, 2**63))])
    s['write-after-read-desc'] = image(2, [desc(HDR, 16, WRITE | NEXT, 1), desc(DATA, 512, NEXT, 2), desc(STATUS, 1, 0)], [0], [])
    s['same-head-twice'] = image(2, [desc(HDR, 16, NEXT, 1), desc(STATUS, 1, WRITE)], [0, 0], [(HDR, hdr(4))], cfg_bits=0x40)
    # In-flight log at 0x8000 (runQueue's inflightAt), version 1: what a killed back-end left behind.
    LOG = 0x8000
    def log(marks=(), used_idx=0, last_batch=0, nexts=(), version=1):  # marks: (head, counter)
        b = bytearray(16 + 16 * 4)
        b[8:16] = u16(version) + u16(4) + u16(last_batch) + u16(used_idx)
        for h, c in marks: b[16 + 16 * h] = 1; b[24 + 16 * h:32 + 16 * h] = u64(c)
        for h, nx in nexts: b[22 + 16 * h:24 + 16 * h] = u16(nx)
        return (LOG, bytes(b))
    chain = [desc(HDR, 16, NEXT, 1), desc(DATA, 512, WRITE | NEXT, 2), desc(STATUS, 1, WRITE)]
    s['inflight-resubmit'] = image(2, chain, [0], [(HDR, hdr(0, 2)), log([(0, 5)])])
    n2, _, used2 = layout(2)
    s['inflight-unmarked-batch'] = image(2, chain, [0], [(HDR, hdr(0, 2)), (used2 + 2, u16(1) + u32(0) + u32(1)),
                                                          log([(0, 5)], used_idx=0, last_batch=0)], used_idx=1)
    s['inflight-garbage'] = image(2, chain, [0], [(HDR, hdr(0, 2)), log([(0, 9), (1, 3), (3, 3)], used_idx=0x7777,
                                                                        last_batch=0xffff, nexts=[(0, 0xfff0), (3, 3)])])
    s['inflight-bad-version'] = image(2, chain, [0], [log([(0, 1)], version=9)])
    s['max-queue'] = image(10, [desc(HDR, 16, NEXT, 1), desc(STATUS, 1, WRITE)], [0], [(HDR, hdr(8))])
    return s

for target, seeds in [('fuzz-request', request_seeds()), ('fuzz-session', session_seeds()), ('fuzz-blkqueue', blk_seeds())]:
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    for old in glob.glob(os.path.join(d, 'seed-*')): os.remove(old)
    for name, data in seeds.items():
        with open(os.path.join(d, 'seed-' + name), 'wb') as f: f.write(data)
    print(f'{target}: {len(seeds)} seeds')
